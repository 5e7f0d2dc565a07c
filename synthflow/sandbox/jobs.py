"""A job's way through the sandbox and back: :class:`Prepared` splits a :class:`Job` into the
server jobs its program and (in driver mode) its tests run as, after the static policy; and
:func:`verdict_for` turns their answers (frames checked against the job's nonce) into a
:class:`Verdict`, comparing on plain data outside the program's process."""

from __future__ import annotations

import ast
import secrets
from typing import Any

from synthflow.sandbox import policy
from synthflow.sandbox.trusted import NotDecomposable, Plan, decompose, judge, literal
from synthflow.sandbox.verdict import Job, Verdict
from synthflow.sandbox.wire import NotPlain, decode


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def program_names(code: str | ast.Module | None, imports: bool = True) -> set[str]:
    """Top-level names a program defines (functions, classes, assignments, and imports unless
    ``imports=False``: a test's ``math.pi`` means the math module, not something of the program)."""
    tree = _parse(code) if isinstance(code, str) else code
    if tree is None:
        return set()
    out: set[str] = set()
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                out |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
        elif imports and isinstance(n, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out


def driver_names(job: Job, names: set[str]) -> set[str]:
    """The program names the tests may reach in driver mode: the entry point, and names the tests use
    that neither they, the prompt nor Python's builtins define. A program's shadow of a builtin
    (``len = ...``) never becomes the tests' ``len``."""
    import builtins

    own: set[str] = set(dir(builtins))
    for src in (job.tests or "", job.prompt or ""):
        tree = _parse(src)
        if tree is None:
            continue
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(n.name)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                own.add(n.id)
            elif isinstance(n, ast.arg):
                own.add(n.arg)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                own |= {(a.asname or a.name).split(".")[0] for a in n.names}
    tests = _parse(job.tests or "")
    used = {n.id for n in ast.walk(tests) if isinstance(n, ast.Name)} if tests is not None else set()
    out = (used - own) & names
    if job.entry_point:
        out.add(job.entry_point)
    return out


def called_name(src: str) -> str | None:
    """The function a call expression calls (``add(2, 3)`` -> ``add``)."""
    try:
        node = ast.parse(src, mode="eval").body
    except SyntaxError:
        return None
    return node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None


POLICY_EXC = {"rebound_entry_point": "ReboundEntryPoint", "forbidden_construct": "ForbiddenConstruct"}


class Prepared:
    """One job: what the servers run for it (one server job, or one per test for a ``test_list``, so
    each test starts from fresh state), and how their answers become a verdict. A program that the
    static policy refuses gets its verdict here, without running."""

    def __init__(self, job: Job, mem_mb: int, nproc: int):
        self.job = job
        self.plans: list[Plan | None] = []
        self.kind = "run"
        self.why = ""
        self.early: tuple[str, str, str] | None = None  # (status, exc_type, message) decided here
        self.server_jobs: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        try:
            self._prepare(job, mem_mb, nproc)
        except (RecursionError, MemoryError):
            # source too deep for the host to read is refused, never left unchecked
            self.early = (
                "fail",
                "ForbiddenConstruct",
                "the program or its tests are too deeply nested to check",
            )
            self.plans, self.server_jobs, self.answers = [], [], []

    def _prepare(self, job: Job, mem_mb: int, nproc: int) -> None:
        try:
            tree = ast.parse(job.code)
        except (SyntaxError, ValueError):
            tree = None  # the run reports the syntax error
        names = program_names(tree, imports=False)
        base = {"code": job.code, "timeout_s": job.timeout_s, "mem_mb": mem_mb, "nproc": nproc,
                "entry_point": job.entry_point, "policy": job.policy}  # fmt: skip
        eps: set[str] = {job.entry_point} if job.entry_point else set()
        jobs: list[dict[str, Any]] = []
        if job.call and (job.tests or job.test_list is not None):
            raise ValueError("a job has either tests, a test_list or a call")
        if job.test_list is not None:
            self.kind = "test_list"
            for t in job.test_list:
                try:
                    plan: Plan | None = decompose(t, names, job.entry_point)
                except NotDecomposable:
                    plan = None  # an undecomposable generated test counts as failing for everyone
                self.plans.append(plan)
                if plan is not None:
                    eps |= {n for c in plan.calls if (n := called_name(c))}
                    per = job.per_test_timeout_s or job.timeout_s
                    jobs.append(
                        dict(base, mode="calls", calls=plan.calls, per_call_timeout_s=per, timeout_s=per + 1)
                    )
        elif job.tests:
            try:
                plan = decompose(job.tests, names, job.entry_point)
                self.kind = "tests"
                self.plans = [plan]
                eps |= {n for c in plan.calls if (n := called_name(c))}
                jobs.append(dict(base, mode="calls", calls=plan.calls))
            except NotDecomposable as e:
                self.kind = "driver"
                self.why = str(e)
                exposed = sorted(driver_names(job, names))
                eps |= set(exposed)
                jobs.append(
                    dict(base, mode="driver", tests=job.tests, prompt=job.prompt or "", program_names=exposed)
                )
        else:
            self.kind = "call" if job.call else "run"
            if job.call and (n := called_name(job.call)):
                eps.add(n)
            jobs.append(dict(base, mode="calls", calls=[job.call] if job.call else []))
        # the lean clean parent for jobs that import only builtin or tiny modules
        analysis = policy.Analysis(tree) if tree is not None else None
        used = analysis.imports() if analysis is not None else set()
        if job.prompt:
            used |= policy.imports(_parse(job.prompt))
        if self.kind == "driver":
            used |= policy.imports(_parse(job.tests or ""))
        warm = not used <= policy.LEAN_OK
        aliases = analysis.module_aliases() if analysis is not None else set()
        eps.discard("candidate")
        if job.policy == "verify" and analysis is not None:
            found = policy.check_analysis(analysis, eps)
            if found:
                self.early = ("fail", POLICY_EXC[found[0]], found[1])
                jobs = []
        eps.discard("candidate")  # HumanEval's name for the entry point inside check()
        for j in jobs:
            j.update(
                nonce=secrets.token_hex(16), entry_points=sorted(eps), warm=warm, modules=sorted(aliases)
            )
            if "calls" in j:
                j["call_fns"] = [called_name(c) for c in j["calls"]]
        self.server_jobs = jobs
        self.answers = [{} for _ in jobs]

    def expected_sources(self) -> list[str]:
        return [e for p in self.plans if p is not None for e in p.expected if not literal(e)[0]]


def frame_results(frame: Any, n: int) -> list[tuple]:
    """The call results of a frame, checked item by item; a frame of the wrong shape is an error."""
    if not isinstance(frame, dict):
        raise NotPlain("a result frame that is not an object")
    raw = frame.get("results")
    if not isinstance(raw, list) or len(raw) != n:
        raise NotPlain("results missing")
    out = []
    for r in raw:
        if isinstance(r, dict) and "ok" in r:
            try:
                out.append(("ok", decode(r["ok"])))
            except (
                NotPlain,
                ValueError,
                TypeError,
                RecursionError,
                OverflowError,
                KeyError,
                IndexError,
            ) as e:
                out.append(("exc", "NotPlainData", str(e)[:200]))
        elif isinstance(r, dict):
            out.append(("exc", str(r.get("exc", "Error"))[:100], str(r.get("msg", ""))[:300]))
        else:
            out.append(("exc", "MalformedResult", "a result that is not an object"))
    return out


def _status_of(exc_type: str) -> str:
    return {"Timeout": "timeout", "MemoryError": "memory"}.get(exc_type, "error")


def _expected(plan: Plan, computed: dict[str, tuple]) -> tuple[list[Any], str]:
    values = []
    for src in plan.expected:
        ok, v = literal(src)
        if not ok:
            r = computed.get(src, ("exc", "ExpectedValue", "missing"))
            if r[0] != "ok":
                return [], f"the test's expected value {src[:60]} failed: {r[1]}: {r[2]}"
            v = r[1]
        values.append(v)
    return values, ""


def _base(a: dict[str, Any], mode: str, trusted: bool = True) -> Verdict:
    return Verdict(
        status=str(a.get("status", "error")),
        exc_type=str(a.get("exc_type", ""))[:100],
        message=str(a.get("message", ""))[:300],
        duration_s=float(a.get("duration_s", 0.0) or 0.0),
        stdout=str(a.get("stdout", "")),
        stderr=str(a.get("stderr", "")),
        mode=mode,
        trusted=trusted,
    )


def _program_error(frame: dict[str, Any]) -> tuple[str, str] | None:
    err = frame.get("program_error")
    if err is None:
        return None
    if not isinstance(err, list) or len(err) != 2:
        raise NotPlain("a malformed program error")
    return str(err[0])[:100], str(err[1])[:300]


def verdict_for(p: Prepared, mode: str, computed: dict[str, tuple]) -> Verdict:
    """The verdict of one job from its processes' answers: decided here, on plain data."""
    if p.early is not None:
        status, exc_type, message = p.early
        return Verdict(status=status, exc_type=exc_type, message=message, mode=mode, trusted=True)
    if p.kind == "test_list":
        return _test_list_verdict(p, mode, computed)
    a = p.answers[0]
    v = _base(a, mode)
    if p.kind == "driver":
        v.trusted = bool(p.job.tests_trusted)
        v.extra["driver"] = p.why[:200]
        if v.status == "done":
            f = a.get("frame")
            if not isinstance(f, dict):
                raise NotPlain("a result frame that is not an object")
            v.status = f.get("status") if f.get("status") in ("pass", "fail", "error") else "error"
            v.exc_type, v.message = str(f.get("exc_type", ""))[:100], str(f.get("message", ""))[:300]
        return v
    if v.status != "done":
        return v
    frame = a.get("frame")
    if not isinstance(frame, dict):
        raise NotPlain("a result frame that is not an object")
    err = _program_error(frame)
    if err:
        v.status, v.exc_type, v.message = _status_of(err[0]), err[0], err[1]
        return v
    results = frame_results(frame, len(p.server_jobs[0]["calls"]))
    v.status = "pass"
    if p.kind == "call":
        r = results[0]
        if r[0] == "ok":
            v.value, v.value_repr = r[1], repr(r[1])[:2000]
        else:
            v.status, v.exc_type, v.message = _status_of(r[1]), r[1], r[2]
    elif p.kind == "tests":
        plan = p.plans[0]
        assert plan is not None
        if not any(x.call is not None for x in plan.asserts):
            v.status, v.exc_type = "fail", "NoTestRan"
            v.message = "no assert calls the program"
            return v
        expected, why = _expected(plan, computed)
        if why:
            v.status, v.exc_type, v.message = "error", "ExpectedValue", why
        else:
            v.status, v.exc_type, v.message = judge(plan, results, expected)
    return v


def _test_list_verdict(p: Prepared, mode: str, computed: dict[str, tuple]) -> Verdict:
    """CodeT: one pass/fail per test, each from its own process. The verdict is ``pass`` with the
    list as its value; the status counts of the tests' runs go to ``extra``."""
    passed: list[bool] = []
    statuses: dict[str, int] = {}
    answers = iter(p.answers)
    duration = 0.0
    for k, plan in enumerate(p.plans):
        if plan is None:
            passed.append(False)
            continue
        a = next(answers)
        duration += float(a.get("duration_s", 0.0) or 0.0)
        try:
            ok = False
            if a.get("status") == "done" and isinstance(a.get("frame"), dict):
                frame = a["frame"]
                err = _program_error(frame)
                if err:
                    statuses[_status_of(err[0])] = statuses.get(_status_of(err[0]), 0) + 1
                else:
                    expected, why = _expected(plan, computed)
                    status = (
                        "error" if why else judge(plan, frame_results(frame, len(plan.calls)), expected)[0]
                    )
                    statuses[status] = statuses.get(status, 0) + 1
                    ok = status == "pass"
            else:
                st = str(a.get("status", "error"))
                statuses[st] = statuses.get(st, 0) + 1
        except (NotPlain, ValueError, TypeError):
            statuses["error"] = statuses.get("error", 0) + 1
            ok = False
        passed.append(ok)
        del k
    v = Verdict(
        status="pass", duration_s=duration, mode=mode, trusted=True, value=passed, value_repr=repr(passed)
    )
    v.extra["test_statuses"] = statuses
    return v
