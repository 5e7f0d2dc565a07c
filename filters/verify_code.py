"""Code verifiers: ``python_tests`` (code with its tests) and ``codet`` (CodeT: candidates and
generated tests, dual execution agreement)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field

from filters.verify import Check, Verifier, VerifyParams, verdict_columns, verdict_reason
from synthflow.record import Record
from synthflow.registry import register
from synthflow.sandbox import Job, Verdict


class CodetParams(VerifyParams):
    codet_min_consensus: int = Field(2, ge=1, description="distinct candidates in the winning set")
    codet_min_tests: int = Field(3, ge=1, description="generated tests the winning set passes")


def verify_python_tests(records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
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


@register("verifier", "python_tests")
class PythonTests(Verifier):
    name = "python_tests"
    reads = frozenset({"solution", "tests"})  # entry_point: when present

    def __call__(self, records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
        return verify_python_tests(records, executor, p)


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


def verify_codet(records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
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


@register("verifier", "codet")
class Codet(Verifier):
    name = "codet"
    Params = CodetParams
    reads = frozenset({"problem", "entry_point", "candidates", "all_tests"})
    columns = {
        "solution": pa.string(),  # the chosen candidate
        "tests": pa.string(),  # the generated tests it passes
        "codet_score": pa.float64(),
        "codet_consensus": pa.int64(),
        "codet_tests_passed": pa.int64(),
        "codet_candidates": pa.int64(),
        "codet_tests_total": pa.int64(),
    }

    def __call__(self, records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
        return verify_codet(records, executor, p)
