"""Fork-server sandbox: warm parents (one per worker) that fork one child per program.

Isolation modes, best first (``SandboxExecutor.mode`` and every verdict report which one ran):

- ``bwrap``: each warm parent runs under Debian's bubblewrap: read-only root, a private size-capped
  /tmp, no network (empty net namespace), its own pid namespace (nothing outlives it),
  ``--die-with-parent``. As root, each child also drops to a uid of its own (the program's and, in
  driver mode, the tests' differ), so it cannot signal or inspect its parent or the other child,
  and leftovers of that uid are swept after every program.
- ``unshare``: ``unshare -rn`` (user + network namespace): weak; only with ``allow_weak``.
- ``fallback``: no namespaces: weak; only with ``allow_weak``.

Untrusted code runs by default only in ``bwrap``; anything weaker must be asked for
(``allow_weak``, ``--allow-weak-sandbox``) and is reported in every verdict, summary and card.

In every mode each child gets a new session and process group, its own empty folder as cwd, a
scrubbed environment, stdin closed, only its job's file descriptors, rlimits (address space, CPU
seconds, file size, open files, processes), a seccomp filter (no fork, exec, socket, ptrace or new
namespace) and an audit hook; a wall-clock timeout kills the whole process group; output is capped.

Verdicts are decided outside the program's process: tests are decomposed into calls the program
evaluates and comparisons the host makes on plain data (``synthflow.sandbox.trusted``); expected
values that are not literals come from a separate clean sandbox that never loads a program; tests
that cannot be decomposed run in driver mode, in a second child that holds the tests and calls the
program only through a pipe. Every job carries a random nonce its frames must repeat.
"""

from __future__ import annotations

import ast
import json
import marshal
import os
import queue
import secrets
import shutil
import struct
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

from synthflow.errors import UserError
from synthflow.sandbox import policy
from synthflow.sandbox.harness import NotPlain, decode
from synthflow.sandbox.trusted import NotDecomposable, Plan, decompose, judge, literal
from synthflow.sandbox.verdict import Job, Verdict

MODES = ("bwrap", "unshare", "fallback")
STRONG = "bwrap"
TMP_BYTES = 512 << 20  # each warm parent's private /tmp (all its jobs' folders)
SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
UID_BASE = 61000


def _bwrap_prefix() -> list[str]:
    cmd = [
        "bwrap",
        "--ro-bind", "/", "/",
        "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
        "--dev", "/dev",
        "--proc", "/proc",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
    ]  # fmt: skip
    cmd += _expose_private_paths()
    if os.geteuid() == 0:
        # the warm parent keeps what it needs to drop each child to its own uid and clean up after it
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    return cmd


def _project_root() -> Path:
    """The folder this process imported synthflow from (a Prefect worker may run a copy of the
    project in a temporary folder, not the checkout the virtualenv's editable install points at)."""
    import synthflow

    return Path(synthflow.__file__).resolve().parents[1]


# the server imports synthflow from the same folder as this process (and the one that is bound in)
_SERVER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from synthflow.sandbox import server; server.main()"
)


def _needed_paths() -> set[Path]:
    """What a sandboxed Python needs to see: the interpreter, the virtualenv and this project."""
    return {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), _project_root()}


def _expose_private_paths() -> list[str]:
    """Children run as an unprivileged uid. When Python or the project lives under a private folder
    (e.g. /root/.pyenv), hide that folder behind an empty tmpfs and bind back only what they need:
    the interpreter, the virtualenv and the project. The rest of it (keys, caches) stays invisible."""
    needed = _needed_paths()
    args: list[str] = []
    # the private /tmp hides anything under /tmp (a checkout or venv there): bind those back
    for path in sorted(needed):
        if Path("/tmp") in path.parents:
            args += ["--ro-bind", str(path), str(path)]
            needed = needed - {path}
    hidden: set[Path] = set()
    for path in sorted(needed):
        for anc in reversed(path.parents):  # from / downwards
            if anc == Path("/"):
                continue
            try:
                if not anc.stat().st_mode & 0o001:  # others may not enter
                    if anc not in hidden:
                        args += ["--perms", "0755", "--tmpfs", str(anc)]
                        hidden.add(anc)
                    break
            except OSError:
                break
    made: set[Path] = set()
    for path in sorted(needed):
        top = next((h for h in hidden if h in path.parents), None)
        if top is None:
            continue
        for d in reversed(path.parents):  # the folders between the tmpfs and the bind must be enterable
            if top in d.parents and d not in made:
                args += ["--perms", "0755", "--dir", str(d)]
                made.add(d)
        args += ["--ro-bind", str(path), str(path)]
    return args


def _works(prefix: list[str]) -> bool:
    try:
        p = subprocess.run(
            [*prefix, sys.executable, "-I", "-S", "-c", "pass"],
            capture_output=True,
            timeout=30,
            env=SERVER_ENV,
        )
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cache
def detect_mode(preferred: str = "auto") -> tuple[str, tuple[str, ...]]:
    """The strongest isolation that works on this machine (or the one asked for)."""
    candidates = {
        "bwrap": _bwrap_prefix() if shutil.which("bwrap") else None,
        "unshare": ["unshare", "-rn", "--"] if shutil.which("unshare") else None,
        "fallback": [],
    }
    order = MODES if preferred == "auto" else (preferred,)
    for mode in order:
        if mode not in candidates:
            raise UserError(f"sandbox mode {mode!r}: choose one of auto, {', '.join(MODES)}")
        prefix = candidates[mode]
        if prefix is None:
            continue
        if mode == "fallback" or _works(prefix):
            return mode, tuple(prefix)
        if preferred == "auto":  # installed but refused (e.g. no user namespaces): say so once
            print(
                f"synthflow: sandbox: {mode} is installed but fails to start here; trying the next mode",
                file=sys.stderr,
            )
    raise UserError(f"sandbox mode {preferred!r} is not available on this machine")


class _Server:
    """One warm parent and its pipes; restarted if a program manages to kill it."""

    def __init__(self, index: int, mode: str, prefix: tuple[str, ...]):
        self.index = index
        self.mode = mode
        self.prefix = prefix
        root = os.geteuid() == 0 and mode == "bwrap"
        self.uid = UID_BASE + 2 * index if root else None  # the program's children
        self.driver_uid = UID_BASE + 2 * index + 1 if root else None  # driver children (the tests)
        self.seccomp = False
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        # marshal: the server reads it before it imports json (its clean parents are forked first)
        cfg = marshal.dumps(
            {"uid": self.uid, "driver_uid": self.driver_uid, "mode": self.mode, "seccomp": True}
        ).hex()
        env = dict(SERVER_ENV)  # the server starts with no secrets to leak (and -I ignores PYTHON*)
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-I", "-S", "-c", _SERVER_BOOT, str(_project_root()), cfg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",
        )
        hello = self._read()
        if not hello or not hello.get("ready"):
            raise UserError(f"sandbox ({self.mode}) failed to start its fork server")
        self.seccomp = bool(hello.get("seccomp"))

    def _read(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            return None
        n = struct.unpack(">I", head)[0]
        body = self.proc.stdout.read(n)
        if len(body) != n:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(job).encode()
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            v = self._read()
        except (BrokenPipeError, OSError):
            v = None
        if not isinstance(v, dict) or v.get("nonce") != job["nonce"]:
            # the warm parent died or answered out of turn: verdict killed, start a new one
            self.close()
            self.restarts += 1
            self.start()
            return {
                "status": "killed",
                "exc_type": "",
                "message": "the sandbox parent died or answered out of turn",
                "duration_s": 0.0,
            }
        return v

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None


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


class _Prepared:
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


def _results(frame: Any, n: int) -> list[tuple]:
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


class SandboxExecutor:
    """Jobs in, verdicts out, through ``workers`` warm fork servers (default: one per core)."""

    def __init__(
        self,
        workers: int | None = None,
        mode: str = "auto",
        mem_mb: int = 1024,
        nproc: int = 64,
        allow_weak: bool = False,
    ):
        self.mode, prefix = detect_mode(mode)
        if self.mode != STRONG and not allow_weak:
            raise UserError(
                f"the strong sandbox (bubblewrap with pid and network namespaces) is not available here; "
                f"only {self.mode!r} is. Install bubblewrap (apt-get install bubblewrap), or run untrusted "
                "code with weaker isolation on purpose: --allow-weak-sandbox / verify: {allow_weak: true}"
            )
        self.weak = self.mode != STRONG
        self._prefix = prefix
        self.workers = workers or len(os.sched_getaffinity(0)) or 1
        self.mem_mb = mem_mb
        self.nproc = nproc
        self._servers = [_Server(i, self.mode, prefix) for i in range(self.workers)]
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._clean: SandboxExecutor | None = None
        self.counts = {"trusted": 0, "untrusted": 0}

    @property
    def seccomp(self) -> bool:
        return all(s.seccomp for s in self._servers)

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._servers)

    def _run_server_jobs(self, server_jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = [{} for _ in server_jobs]
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(server_jobs)):
            todo.put(i)

        def worker(server: _Server) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                answers[i] = server.run(server_jobs[i])

        threads = [
            threading.Thread(target=worker, args=(s,), daemon=True) for s in self._servers[: len(server_jobs)]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

    def _clean_values(self, prepared: list[_Prepared]) -> list[dict[str, tuple]]:
        """Expected values that are not literals, from a sandbox that never loads a program: one job
        per row, so a slow or failing expression spoils only its own row."""
        wanted = [list(dict.fromkeys(p.expected_sources())) for p in prepared]
        if not any(wanted):
            return [{} for _ in prepared]
        if self._clean is None:
            self._clean = SandboxExecutor(workers=1, mode=self.mode, mem_mb=self.mem_mb, allow_weak=True)
        jobs, owners = [], []
        for i, sources in enumerate(wanted):
            if sources:
                jobs.append({"code": "", "mode": "calls", "calls": sources, "call_fns": [called_name(x) for x in sources],
                             "per_call_timeout_s": 2.0,
                             "timeout_s": 2.0 * len(sources) + 2.0, "mem_mb": self.mem_mb, "nproc": self.nproc,
                             "policy": "none", "entry_points": [], "nonce": secrets.token_hex(16)})  # fmt: skip
                owners.append(i)
        out: list[dict[str, tuple]] = [{} for _ in prepared]
        for i, a in zip(owners, self._clean._run_server_jobs(jobs), strict=True):
            sources = wanted[i]
            try:
                if a.get("status") != "done":
                    raise NotPlain(str(a.get("message") or "could not compute"))
                res = _results(a.get("frame"), len(sources))
            except NotPlain as e:
                res = [("exc", "ExpectedValue", str(e)[:200])] * len(sources)
            out[i] = dict(zip(sources, res, strict=True))
        return out

    def run(self, jobs: list[Job]) -> list[Verdict]:
        if not jobs:
            return []
        prepared = [_Prepared(j, self.mem_mb, self.nproc) for j in jobs]
        flat = [(p, k) for p in prepared for k in range(len(p.server_jobs))]
        with self._lock:  # one batch at a time per executor
            answers = self._run_server_jobs([p.server_jobs[k] for p, k in flat])
            for (p, k), a in zip(flat, answers, strict=True):
                p.answers[k] = a
            computed = self._clean_values(prepared)
        return [self._verdict(p, c) for p, c in zip(prepared, computed, strict=True)]

    def _verdict(self, p: _Prepared, computed: dict[str, tuple]) -> Verdict:
        try:
            v = verdict_for(p, self.mode, computed)
        except Exception as e:  # noqa: BLE001 - one malformed answer spoils only its own row
            v = Verdict(status="error", exc_type="MalformedResult", message=f"{type(e).__name__}: {e}"[:300],
                        mode=self.mode, trusted=True)  # fmt: skip
        with self._count_lock:
            self.counts["trusted" if v.trusted else "untrusted"] += 1
        return v

    def close(self) -> None:
        for s in self._servers:
            s.close()
        if self._clean is not None:
            self._clean.close()

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def verdict_for(p: _Prepared, mode: str, computed: dict[str, tuple]) -> Verdict:
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
    results = _results(frame, len(p.server_jobs[0]["calls"]))
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


def _test_list_verdict(p: _Prepared, mode: str, computed: dict[str, tuple]) -> Verdict:
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
                    status = "error" if why else judge(plan, _results(frame, len(plan.calls)), expected)[0]
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
