"""Executor verification: run the program each record carries and put a verdict on the record."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import get, register
from synthflow.sandbox import Job, Verdict


class VerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "math_pot"
    sandbox_mode: str = Field("auto", description="auto, bwrap, unshare or fallback")
    allow_weak: bool = Field(
        False, description="run untrusted code even where only a weak sandbox (unshare, fallback) works"
    )
    require_trusted: bool = Field(
        True, description="a verdict decided inside reach of the program (undecomposable tests) is a reject"
    )
    timeout_s: float = Field(5.0, gt=0)
    workers: int | None = Field(None, gt=0)
    mem_mb: int = Field(1024, gt=16)
    rel_tol: float = Field(1e-6, ge=0)
    percent_equals_fraction: bool = Field(True, description="math_pot: does '50%' also equal 0.5?")
    sc_min_agreement: float = Field(
        0.75, ge=0, le=1, description="math_pot: share of self-consistency samples that must agree (3 of 4)"
    )
    require_all_tests: bool = Field(True, description="python_tests: every test must pass")
    codet_min_consensus: int = Field(2, ge=1, description="codet: distinct candidates in the winning set")
    codet_min_tests: int = Field(3, ge=1, description="codet: generated tests the winning set passes")


@dataclass
class Check:
    ok: bool
    reason: str
    verdict: dict[str, Any]


def verdict_columns(kind: str, v: Verdict, **details: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "status": v.status,
        "mode": v.mode,
        "exc_type": v.exc_type,
        "message": v.message,
        "duration_s": round(v.duration_s, 6),
        "trusted": v.trusted,
        "details": json.dumps(
            {"value": v.value_repr, "stdout": v.stdout[:500], "trusted": v.trusted, **details}, default=str
        ),
    }


@register("verifier", "math_pot")
def verify_math_pot(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """Program of thought: run ``solution()`` and compare with the stated answer using math-verify.

    With self-consistency samples (``fields['sc_programs']``: k programs written for the published
    problem without its answer in view) every sample runs too and votes with its value; the main
    program does not vote. The row passes only when the votes' majority is unique (a tie rejects),
    equals the stated answer, and at least ``sc_min_agreement`` of the k samples agree with it. A
    sample that does not compile, fails, returns nothing or is trivial counts against agreement.

    A row with a ``reference_answer`` (a persona rewrite of a seed problem with a known answer) must
    also compute that answer: ``verify:reference_mismatch``.

    First, a program that only states its answer (a literal or constant return, a value computed
    from none of the problem's numbers, the stated answer written into the code) is rejected
    without running: ``verify:trivial_program:<why>`` (``synthflow.trivial``)."""
    from synthflow.mathcheck import canonical, equivalent
    from synthflow.trivial import trivial_reason

    trivial = {
        i: why
        for i, r in enumerate(records)
        if (why := trivial_reason(r.fields.get("problem", ""), r.fields["program"], r.fields.get("answer")))
    }
    jobs, owners = [], []
    for i, r in enumerate(records):
        if i in trivial:
            continue
        jobs.append(Job(code=r.fields["program"], call="solution()", timeout_s=p.timeout_s))
        owners.append((i, -1))
        for k, prog in enumerate(r.fields.get("sc_programs") or []):
            # a sample that only states a number does not vote (it counts against agreement)
            if prog and not trivial_reason(r.fields.get("problem", ""), prog):
                jobs.append(Job(code=prog, call="solution()", timeout_s=p.timeout_s))
                owners.append((i, k))
    verdicts = executor.run(jobs)
    main_of: dict[int, Verdict] = {}
    samples: dict[int, dict[int, Verdict]] = {}
    for (i, k), v in zip(owners, verdicts, strict=True):
        if k < 0:
            main_of[i] = v
        else:
            samples.setdefault(i, {})[k] = v
    out = []
    for i, r in enumerate(records):
        if i in trivial:
            v = Verdict(
                "fail",
                exc_type="TrivialProgram",
                message=f"solution() does not compute its answer from the problem ({trivial[i]})",
                mode=getattr(executor, "mode", ""),
            )
            out.append(Check(False, f"verify:trivial_program:{trivial[i]}", verdict_columns("math_pot", v)))
            continue
        main = main_of[i]
        if main.status != "pass":
            out.append(
                Check(
                    False,
                    f"verify:{main.status}" + (f":{main.exc_type}" if main.exc_type else ""),
                    verdict_columns("math_pot", main),
                )
            )
            continue
        stated = r.fields.get("answer")
        value = main.value if main.value is not None else main.value_repr
        ok = equivalent(stated, value, p.percent_equals_fraction)
        details: dict[str, Any] = {"stated": stated}
        reason = "" if ok else "verify:answer_mismatch"
        # a problem with a known answer (a persona rewrite of a seed problem keeps its numbers and
        # question): the program must compute that answer, not only the one the row states
        ref = r.fields.get("reference_answer") or None
        if ref is not None:
            details["reference"] = ref
            if ok and not equivalent(ref, value, p.percent_equals_fraction):
                ok, reason = False, "verify:reference_mismatch"
        progs = r.fields.get("sc_programs") or []
        if progs:
            got = samples.get(i, {})
            votes = [
                canonical(v.value)
                if (v := got.get(k)) is not None and v.status == "pass" and v.value is not None
                else None
                for k in range(len(progs))
            ]
            ranked = Counter(x for x in votes if x is not None).most_common()
            agree = sum(
                1 for x in votes if x is not None and equivalent(stated, x, p.percent_equals_fraction)
            )
            r.fields["sc_votes"] = votes
            r.fields["sc_agreement"] = round(agree / len(votes), 4)
            tie = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
            r.fields["sc_majority"] = ranked[0][0] if ranked and not tie else None
            details.update(
                sc_votes=votes, sc_agreement=r.fields["sc_agreement"], sc_majority=r.fields["sc_majority"]
            )
            if ok:
                if not ranked:
                    ok, reason = False, "verify:self_consistency_no_votes"
                elif tie:
                    ok, reason = False, "verify:self_consistency_tie"
                elif not equivalent(stated, ranked[0][0], p.percent_equals_fraction):
                    ok, reason = False, "verify:self_consistency_disagrees"
                elif r.fields["sc_agreement"] < p.sc_min_agreement:
                    ok, reason = False, "verify:self_consistency_weak"
        vc = verdict_columns("math_pot", main, **details)
        if not ok:
            vc["status"] = "fail"
            vc["message"] = (
                f"program returned {main.value_repr[:80]}, answer says {stated!r}"
                + (f", the source problem's answer is {ref!r}" if ref is not None else "")
            ) + (f"; samples voted {r.fields.get('sc_votes')}" if progs else "")
        out.append(Check(ok, reason, vc))
    return out


@register("verifier", "python_tests")
def verify_python_tests(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """Code plus tests (asserts, or HumanEval's ``check(candidate)`` with ``entry_point``)."""
    jobs = [
        Job(code=r.fields["code"] if "code" in r.fields else r.fields["solution"], tests=r.fields["tests"],
            entry_point=r.fields.get("entry_point"), timeout_s=p.timeout_s)
        for r in records
    ]  # fmt: skip
    out = []
    for v in executor.run(jobs):
        ok = v.status == "pass"
        out.append(
            Check(
                ok,
                "" if ok else f"verify:{v.status}" + (f":{v.exc_type}" if v.exc_type else ""),
                verdict_columns("python_tests", v),
            )
        )
    return out


def codet_select(matrix: list[list[bool]]) -> tuple[list[int], list[int], int]:
    """CodeT dual execution agreement. Candidates that pass exactly the same tests form a consensus
    set; its score is (#candidates) x (#tests they pass). Returns (candidates, tests, score) of the
    best set; ties go to more tests passed, then to the earliest candidate."""
    groups: dict[tuple[bool, ...], list[int]] = {}
    for c, row in enumerate(matrix):
        groups.setdefault(tuple(row), []).append(c)
    best: tuple[int, int, int] | None = None
    best_key: tuple[bool, ...] = ()
    for key, cands in groups.items():
        rank = (len(cands) * sum(key), sum(key), -cands[0])
        if best is None or rank > best:
            best, best_key = rank, key
    assert best is not None
    tests = [t for t, ok in enumerate(best_key) if ok]
    return groups[best_key], tests, best[0]


@register("verifier", "codet")
def verify_codet(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """CodeT: run every candidate solution against every generated test, keep the solution of the
    largest-scoring consensus set and the tests it passes."""
    jobs, owners = [], []
    for i, r in enumerate(records):
        tests = r.fields.get("all_tests") or []
        for c, cand in enumerate(r.fields.get("candidates") or []):
            jobs.append(
                Job(
                    code=cand,
                    test_list=tests,
                    per_test_timeout_s=p.timeout_s,
                    timeout_s=p.timeout_s * (len(tests) + 1),
                )
            )
            owners.append((i, c))
    verdicts = executor.run(jobs)
    matrices: dict[int, list[list[bool]]] = {}
    statuses: dict[int, Counter] = {}
    for (i, _c), v in zip(owners, verdicts, strict=True):
        n_tests = len(records[i].fields.get("all_tests") or [])
        row = (
            [bool(x) for x in v.value]
            if v.status == "pass" and isinstance(v.value, list)
            else [False] * n_tests
        )
        matrices.setdefault(i, []).append(row)
        statuses.setdefault(i, Counter())[v.status] += 1
    out = []
    for i, r in enumerate(records):
        m = matrices.get(i) or []
        n_tests = len(r.fields.get("all_tests") or [])
        st = dict(statuses.get(i) or {})
        if not m or not n_tests:
            v = Verdict(
                "error",
                exc_type="NoCandidates",
                message="no candidates or no tests to run",
                mode=getattr(executor, "mode", ""),
            )
            out.append(Check(False, "verify:codet_empty", verdict_columns("codet", v)))
            continue
        cands, tests, score = codet_select(m)
        chosen = cands[0]
        r.fields.update(
            solution=r.fields["candidates"][chosen],
            tests="\n".join(r.fields["all_tests"][t] for t in tests),
            codet_score=float(score),
            codet_consensus=len(cands),
            codet_tests_passed=len(tests),
            codet_candidates=len(m),
            codet_tests_total=n_tests,
        )
        main = verdicts[owners.index((i, chosen))]
        vc = verdict_columns("codet", main, matrix=m, chosen=chosen, candidate_status=st)
        if score == 0:
            reason, why = "verify:codet_no_agreement", "no candidate passes any generated test"
        elif len(cands) < p.codet_min_consensus:
            reason = "verify:codet_small_consensus"
            why = f"{len(cands)} distinct candidate(s) agree; the recipe needs {p.codet_min_consensus}"
        elif len(tests) < p.codet_min_tests:
            reason = "verify:codet_few_tests"
            why = f"the winning candidates pass {len(tests)} test(s); the recipe needs {p.codet_min_tests}"
        else:
            reason = why = ""
        if reason:
            vc["status"] = "fail"
            vc["message"] = why
        out.append(Check(not reason, reason, vc))
    return out


_COUNT_Q = re.compile(r"\bhow\s+many\b", re.I)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def variant_problem(r: Record, v: Verdict) -> str:
    """'' when a template variant's verdict gives a usable answer, else why not."""
    from synthflow.mathcheck import is_whole

    if v.status != "pass":
        return f"verify:variant_failed:{v.status}" + (f":{v.exc_type}" if v.exc_type else "")
    x = v.value
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "verify:variant_non_numeric"
    if isinstance(x, float) and not math.isfinite(x):
        return "verify:variant_non_finite"
    if x < 0:
        return "verify:variant_negative"
    if _COUNT_Q.search(r.fields.get("problem") or "") and not is_whole(x):
        return "verify:non_integer_count"  # a "how many" question needs a whole number
    words = r.fields.get("solution")
    if words:
        from synthflow.mathcheck import equivalent

        nums = _LAST_NUMBER.findall(words)
        if not nums or not equivalent(nums[-1].replace(",", ""), x):
            return "verify:solution_mismatch"  # the worded solution ends on another number
    return ""


@register("verifier", "template")
def verify_template(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """TemplateGSM: run each variant's program on its assignment; the value is the answer. A variant
    whose program fails, or whose answer is non-numeric, non-finite, negative, a fraction for a "how
    many" question, or not the number its worded solution ends on, is rejected on its own. A whole
    template goes only when more than half of its variants fail, or when 3+ variants all give the
    same answer (the variables do not matter)."""
    from synthflow.mathcheck import canonical, is_whole

    jobs = [
        Job(
            code=r.fields["program"],
            call=f"solution(**{json.loads(r.fields['assignment'])!r})",
            timeout_s=p.timeout_s,
        )
        for r in records
    ]
    verdicts = executor.run(jobs)
    own = [variant_problem(r, v) for r, v in zip(records, verdicts, strict=True)]
    by_tmpl: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_tmpl.setdefault(r.fields["template_id"], []).append(i)
    whole: dict[str, str] = {}
    for tid, idx in by_tmpl.items():
        ok = [i for i in idx if not own[i]]
        if len(ok) * 2 < len(idx):
            whole[tid] = "verify:template_mostly_fails"
        elif len(ok) >= 3 and len({canonical(verdicts[i].value) for i in ok}) == 1:
            whole[tid] = "verify:degenerate:constant"
    out = []
    for i, (r, v) in enumerate(zip(records, verdicts, strict=True)):
        reason = own[i] or whole.get(r.fields["template_id"], "")
        if not reason:
            x = v.value
            r.fields["answer"] = str(int(x)) if is_whole(x) else str(round(float(x), 6))
        vc = verdict_columns("template", v, assignment=r.fields["assignment"])
        if reason:
            vc["status"] = "fail" if v.status == "pass" else v.status
        out.append(Check(not reason, reason, vc))
    return out


def make_executor(p: VerifyParams, dask: str | None = None) -> Any:
    from synthflow.sandbox.forkserver import SandboxExecutor

    if dask:  # the run's --dask: the same verdicts, computed on the cluster's workers
        from synthflow.sandbox.dask_executor import DaskSandbox

        return DaskSandbox(dask, mode=p.sandbox_mode, mem_mb=p.mem_mb, allow_weak=p.allow_weak)
    return SandboxExecutor(workers=p.workers, mode=p.sandbox_mode, mem_mb=p.mem_mb, allow_weak=p.allow_weak)


@register("filter", "verify")
class Verify(Filter):
    """Runs the verifier ``kind`` (pal, ...) over a batch; failures are rejects ``verify:<status>``."""

    name = "verify"
    stage = "verify"
    Params = VerifyParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.kind: Callable[..., list[Check]] = get("verifier", self.params.kind, "filters.verify.kind")
        self.executor = make_executor(self.params, getattr(self.ctx, "dask", None))

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        if not records:
            return res
        for r, c in zip(records, self.kind(records, self.executor, self.params), strict=True):
            r.verdict = c.verdict
            if c.ok and self.params.require_trusted and c.verdict.get("trusted") is False:
                c = Check(False, "verify:untrusted_test", {**c.verdict, "status": "fail"})
                r.verdict = c.verdict
            if c.ok:
                res.kept.append(r)
            else:
                res.rejects.append(Reject(r, self.stage, c.reason))
        return res

    def summary(self) -> dict[str, Any]:
        ex = self.executor
        return {
            "kind": self.params.kind,
            "sandbox": ex.mode,
            "weak_sandbox": ex.weak,
            "seccomp": ex.seccomp,
            "verdicts_trusted": ex.counts["trusted"],
            "verdicts_untrusted": ex.counts["untrusted"],
        }

    def close(self) -> None:
        self.executor.close()
