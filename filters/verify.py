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


SPECIAL_REASONS = {
    "ReboundEntryPoint": "verify:rebound_entry_point",
    "ForbiddenConstruct": "verify:forbidden_construct",
    "NoTestRan": "verify:no_test_ran",
}


def verdict_reason(v: Verdict) -> str:
    """The reject reason of a verdict that is not a pass."""
    if v.exc_type in SPECIAL_REASONS:
        return SPECIAL_REASONS[v.exc_type]
    return f"verify:{v.status}" + (f":{v.exc_type}" if v.exc_type else "")


def _numeric(v: Verdict) -> bool:
    """Only a number is an answer (an int, a finite float, a Fraction or a Decimal): a str, list or
    dict whose last number math-verify would read is not."""
    x = v.value
    if v.status != "pass":
        return False
    if type(x) is int or type(x).__name__ == "Fraction":
        return True
    if type(x) is float or type(x).__name__ == "Decimal":
        return math.isfinite(x)
    return False


@register("verifier", "math_pot")
def verify_math_pot(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """Program of thought: run ``solution()`` and compare with the stated answer using math-verify.

    ``solution`` must be the function its one ``def`` makes (not a lambda, a second def, a
    decorator's result or anything rebound at run time: ``verify:rebound_entry_point``), the program
    must be plain (``verify:forbidden_construct``), and its value a number
    (``verify:non_numeric_answer``). It must compute: the program runs again with the problem's
    numbers changed, two ways, and must give another value at least once
    (``verify:trivial_program:constant_under_perturbation``; ``29 + 1 + 0 * boxes`` or a helper
    returning 30 gives the same value whatever the numbers are).

    With self-consistency samples (``fields['sc_programs']``: k programs written for the published
    problem without its answer in view) every sample runs too and votes with its value; the main
    program does not vote. Votes are grouped by exact value (12 significant digits for floats, ints
    whole) and compared with math-verify. The row passes only when the votes' majority is unique (a
    tie rejects), equals the stated answer, and at least ``sc_min_agreement`` of the k samples agree
    with it. A sample that does not compile, fails, returns no number or is trivial counts against.

    A row with a ``reference_answer`` (a persona rewrite of a seed problem with a known answer) must
    also compute that answer: ``verify:reference_mismatch``.

    First, a program that only states its answer (a literal or constant return, a value computed
    from none of the problem's numbers, the stated answer written into the code) is rejected
    without running: ``verify:trivial_program:<why>`` (``synthflow.trivial``)."""
    from synthflow.mathcheck import as_text, equivalent, single_answer
    from synthflow.trivial import perturbations, trivial_reason

    trivial = {
        i: why
        for i, r in enumerate(records)
        if (why := trivial_reason(r.fields.get("problem", ""), r.fields["program"], r.fields.get("answer")))
    }
    jobs, owners = [], []

    def job(code: str) -> Job:
        return Job(code=code, call="solution()", entry_point="solution", timeout_s=p.timeout_s)

    for i, r in enumerate(records):
        if i in trivial:
            continue
        jobs.append(job(r.fields["program"]))
        owners.append((i, "main", -1))
        for k, prog in enumerate(perturbations(r.fields.get("problem", ""), r.fields["program"])):
            jobs.append(job(prog))
            owners.append((i, "perturbed", k))
        for k, prog in enumerate(r.fields.get("sc_programs") or []):
            # a sample that only states a number does not vote (it counts against agreement)
            if prog and not trivial_reason(r.fields.get("problem", ""), prog):
                jobs.append(job(prog))
                owners.append((i, "sample", k))
    verdicts = executor.run(jobs)
    main_of: dict[int, Verdict] = {}
    perturbed: dict[int, list[Verdict]] = {}
    samples: dict[int, dict[int, Verdict]] = {}
    for (i, role, k), v in zip(owners, verdicts, strict=True):
        if role == "main":
            main_of[i] = v
        elif role == "perturbed":
            perturbed.setdefault(i, []).append(v)
        else:
            samples.setdefault(i, {})[k] = v
    out = []
    mode = getattr(executor, "mode", "")
    for i, r in enumerate(records):
        if i in trivial:
            v = Verdict(
                "fail",
                exc_type="TrivialProgram",
                message=f"solution() does not compute its answer from the problem ({trivial[i]})",
                mode=mode,
            )
            out.append(Check(False, f"verify:trivial_program:{trivial[i]}", verdict_columns("math_pot", v)))
            continue
        main = main_of[i]
        if main.status != "pass":
            out.append(Check(False, verdict_reason(main), verdict_columns("math_pot", main)))
            continue
        stated = r.fields.get("answer")
        details: dict[str, Any] = {"stated": stated}
        if not single_answer(stated):
            vc = verdict_columns("math_pot", main, **details)
            vc["status"] = "fail"
            vc["message"] = f"the stated answer {str(stated)[:60]!r} is not one number"
            out.append(Check(False, "verify:ambiguous_answer", vc))
            continue
        if not _numeric(main):
            vc = verdict_columns("math_pot", main, **details)
            vc["status"] = "fail"
            vc["message"] = f"solution() returned {main.value_repr[:80]}, not a number"
            out.append(Check(False, "verify:non_numeric_answer", vc))
            continue
        value = main.value
        ok = equivalent(stated, value, p.percent_equals_fraction)
        reason = "" if ok else "verify:answer_mismatch"
        pert = perturbed.get(i, [])
        if pert:
            moved = [x for x in pert if _numeric(x) and not equivalent(as_text(value), x.value)]
            details["perturbed"] = [x.value_repr[:40] if x.status == "pass" else x.status for x in pert]
            if ok and not moved:
                ok, reason = False, "verify:trivial_program:constant_under_perturbation"
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
                as_text(v.value) if (v := got.get(k)) is not None and _numeric(v) else None
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
            if reason == "verify:trivial_program:constant_under_perturbation":
                vc["message"] = (
                    f"solution() returns {main.value_repr[:40]} whatever the problem's numbers are"
                )
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
        out.append(Check(ok, "" if ok else verdict_reason(v), verdict_columns("python_tests", v)))
    return out


def codet_select(
    matrix: list[list[bool]], weights: list[int] | None = None
) -> tuple[list[int], list[int], int]:
    """CodeT dual execution agreement. Candidate groups that pass exactly the same tests form a
    consensus set; its score is (samples in the set) x (tests they pass), where a group's weight is
    how many of the sampled solutions it holds. Returns (groups, tests, score) of the best set; ties
    go to more tests passed, then to the earliest group."""
    weights = weights or [1] * len(matrix)
    sets: dict[tuple[bool, ...], list[int]] = {}
    for c, row in enumerate(matrix):
        sets.setdefault(tuple(row), []).append(c)
    best: tuple[int, int, int] | None = None
    best_key: tuple[bool, ...] = ()
    for key, groups in sets.items():
        weight = sum(weights[g] for g in groups)
        rank = (weight * sum(key), sum(key), -groups[0])
        if best is None or rank > best:
            best, best_key = rank, key
    assert best is not None
    tests = [t for t, ok in enumerate(best_key) if ok]
    return sets[best_key], tests, best[0]


def candidate_groups(candidates: Sequence[str]) -> list[list[int]]:
    """Candidates grouped by normalized AST (comments, docstrings, formatting and the names a function
    binds do not make a new candidate), in order of first appearance."""
    from synthflow.generators.code_codet import normalized_ast

    groups: dict[str, list[int]] = {}
    for i, code in enumerate(candidates):
        try:
            key = normalized_ast(code)
        except (SyntaxError, ValueError, RecursionError):
            key = f"unparsable:{i}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _test_key(test: str) -> str:
    import ast

    try:
        return ast.dump(ast.parse(test))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return test


@register("verifier", "codet")
def verify_codet(records: Sequence[Record], executor: Any, p: VerifyParams) -> list[Check]:
    """CodeT (Chen et al. 2022): the sampled candidates are grouped by normalized AST, and a group's
    weight is how many samples it holds (the paper's frequency signal; renamed copies are one group).
    A generated test counts only when it calls the function under test and compares the result
    (``assert "add(1, 2) == 3"`` or ``assert True`` tests nothing); each counted test runs in a fresh
    process, so a candidate's memory cannot carry from one test to the next. The consensus set with
    the highest (samples x tests passed) wins; it needs ``codet_min_consensus`` distinct groups and
    ``codet_min_tests`` passing tests. Its first group's solution and the tests it passes are kept."""
    from synthflow.sandbox.trusted import counts_as_test

    jobs, owners, plans = [], [], {}
    for i, r in enumerate(records):
        ep = r.fields.get("entry_point")
        tests, seen = [], set()
        for t in r.fields.get("all_tests") or []:
            key = _test_key(t)  # the same assert written twice counts once
            if key not in seen and counts_as_test(t, ep):
                seen.add(key)
                tests.append(t)
        groups = candidate_groups(r.fields.get("candidates") or [])
        plans[i] = (tests, groups)
        for g, members in enumerate(groups):
            jobs.append(
                Job(
                    code=r.fields["candidates"][members[0]],
                    test_list=tests,
                    entry_point=ep,
                    per_test_timeout_s=p.timeout_s,
                    timeout_s=p.timeout_s * (len(tests) + 1),
                )
            )
            owners.append((i, g))
    verdicts = executor.run(jobs)
    matrices: dict[int, list[list[bool]]] = {}
    statuses: dict[int, Counter] = {}
    first: dict[tuple[int, int], Verdict] = {}
    for (i, g), v in zip(owners, verdicts, strict=True):
        n_tests = len(plans[i][0])
        row = (
            [bool(x) for x in v.value]
            if v.status == "pass" and isinstance(v.value, list)
            else [False] * n_tests
        )
        matrices.setdefault(i, []).append(row)
        statuses.setdefault(i, Counter())[v.status if v.status != "pass" or any(row) else "fail"] += 1
        first[(i, g)] = v
    out = []
    for i, r in enumerate(records):
        tests, groups = plans[i]
        m = matrices.get(i) or []
        st = dict(statuses.get(i) or {})
        if not m or not tests:
            v = Verdict(
                "error",
                exc_type="NoCandidates",
                message="no candidates, or no generated test that calls the function and compares its result",
                mode=getattr(executor, "mode", ""),
            )
            out.append(Check(False, "verify:codet_empty", verdict_columns("codet", v)))
            continue
        weights = [len(members) for members in groups]
        chosen_groups, passed, score = codet_select(m, weights)
        chosen = groups[chosen_groups[0]][0]
        r.fields.update(
            solution=r.fields["candidates"][chosen],
            tests="\n".join(tests[t] for t in passed),
            codet_score=float(score),
            codet_consensus=len(chosen_groups),
            codet_tests_passed=len(passed),
            codet_candidates=len(groups),
            codet_tests_total=len(tests),
        )
        main = first[(i, chosen_groups[0])]
        vc = verdict_columns(
            "codet", main, matrix=m, weights=weights, chosen=chosen, candidate_status=st,
            tests_not_counted=len(r.fields.get("all_tests") or []) - len(tests),
        )  # fmt: skip
        if score == 0:
            reason, why = "verify:codet_no_agreement", "no candidate passes any generated test"
        elif len(chosen_groups) < p.codet_min_consensus:
            reason = "verify:codet_small_consensus"
            why = (
                f"{len(chosen_groups)} distinct candidate(s) agree; the recipe needs {p.codet_min_consensus}"
            )
        elif len(passed) < p.codet_min_tests:
            reason = "verify:codet_few_tests"
            why = f"the winning candidates pass {len(passed)} test(s); the recipe needs {p.codet_min_tests}"
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
        return verdict_reason(v).replace("verify:", "verify:variant_failed:", 1)
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
    from synthflow.mathcheck import as_text, is_whole

    jobs = [
        Job(
            code=r.fields["program"],
            call=f"solution(**{json.loads(r.fields['assignment'])!r})",
            entry_point="solution",
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
        elif len(ok) >= 3 and len({as_text(verdicts[i].value) for i in ok}) == 1:
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
