"""CodeT: dual execution agreement selection, and the code generator's full loop on a scripted engine."""

from __future__ import annotations

import yaml

from filters.verify_code import codet_select
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.generators.code_codet import CodeCodeT, parse_problem, parse_solution, parse_tests
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import DATA, ROOT


def test_codet_prefers_agreement_times_tests():
    # c0 and c2 agree (pass t0, t1, t2); c1 passes only t1; c3 passes t1, t2
    m = [[True, True, True], [False, True, False], [True, True, True], [False, True, True]]
    cands, tests, score = codet_select(m)
    assert cands == [0, 2] and tests == [0, 1, 2] and score == 6
    # a lone candidate passing many tests loses to a larger consensus on fewer tests
    m = [
        [True, True, False, False],
        [True, False, False, False],
        [True, False, False, False],
        [True, False, False, False],
    ]
    cands, tests, score = codet_select(m)
    assert cands == [1, 2, 3] and tests == [0] and score == 3
    assert codet_select([[False, False]])[2] == 0


def test_parsers():
    p = parse_problem("Problem: Return the largest item of a list.\nSignature: def biggest(xs):\nmore")
    assert p == {
        "problem": "Return the largest item of a list.",
        "signature": "def biggest(xs):",
        "entry_point": "biggest",
    }
    assert parse_solution("```python\ndef f(x):", "\n    return x\n```\ntext") == "def f(x):\n    return x"
    assert parse_solution("```python\ndef f(x):", "\n    return (\n```") is None
    got = parse_tests(
        "```python\nassert f(",
        "1) == 1\nassert f(2) == 2\nassert g(1) == 1\nassert f(1) == 1\nassert f(\n```",
        "f",
        8,
    )
    assert got == ["assert f(1) == 1", "assert f(2) == 2"]


def test_generator_loop_with_fake_engine(tmp_path):
    data = yaml.safe_load((ROOT / "recipes" / "code.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / "fake_code.json")}}
    p = tmp_path / "code.yaml"
    p.write_text(yaml.safe_dump(data))
    recipe = load_recipe(p)
    gen = CodeCodeT(recipe, extract_seeds(recipe.seeds))
    eng = FakeEngine(DATA / "fake_code.json")
    res = gen.run(gen.plan(0, 3), eng, Sampling())
    assert eng.calls == 3, "one call per step: the problems, all solutions, all tests"
    assert len(res.kept) == 3 and not res.rejects
    r = res.kept[0]
    assert len(r.fields["candidates"]) == 4
    assert r.fields["all_tests"] == [
        "assert total([1, 2]) == 3",
        "assert total([]) == 0",
        "assert total([5]) == 5",
        "assert total([2, 2]) == 4",
    ]

    from filters.verify import Verify

    v = Verify({"kind": "codet", "timeout_s": 2})
    try:
        out = v(res.kept)
    finally:
        v.close()
    assert len(out.kept) == 3
    r = out.kept[0]
    r.messages = gen.messages(r.fields)
    assert (
        r.fields["codet_consensus"] == 2
        and r.fields["codet_tests_passed"] == 4
        and r.fields["codet_score"] == 8
    )
    assert "return sum(nums)" in r.fields["solution"]
    assert r.messages[1]["content"] == f"```python\n{r.fields['solution']}\n```"
    assert r.verdict["kind"] == "codet" and r.verdict["mode"] == v.executor.mode


def test_shipped_code_seeds_pass_their_own_tests():
    from synthflow.sandbox import Job
    from synthflow.sandbox.forkserver import SandboxExecutor
    from synthflow.seeds import jsonl_seeds

    seeds = jsonl_seeds("builtin:code_seeds.jsonl")
    with SandboxExecutor(workers=2) as ex:
        verdicts = ex.run([Job(code=s.data["solution"], tests="\n".join(s.data["tests"])) for s in seeds])
    assert [v.status for v in verdicts] == ["pass"] * len(seeds)


def test_shipped_math_seeds_verify_with_math_pot():
    from filters.verify import Verify
    from synthflow.generators.math_pal import pal_messages
    from synthflow.record import Record
    from synthflow.seeds import jsonl_seeds

    recs = []
    for s in jsonl_seeds("builtin:math_seeds.jsonl"):
        f = {k: s.data[k] for k in ("problem", "program", "answer")}
        recs.append(
            Record(
                id=s.seed_id,
                recipe="t",
                generator="math_pal",
                seed_id=s.seed_id,
                fields=f,
                messages=pal_messages(f),
            )
        )
    v = Verify({"kind": "math_pot"})
    try:
        res = v(recs)
    finally:
        v.close()
    assert not res.rejects, [(j.record.id, j.reason, j.record.verdict["message"]) for j in res.rejects]


def test_math_pot_equivalences_and_percent_setting():
    from filters.verify import Verify
    from synthflow.record import Record

    def rec(prog, ans):
        return Record(
            id=f"{prog}|{ans}",
            recipe="t",
            generator="math_pal",
            seed_id="s",
            fields={
                "problem": f"Compute {prog}.",
                "program": f"def solution():\n    x = {prog}\n    return x * 1",
                "answer": ans,
            },
        )

    cases = [
        ("1/2", "0.5", True),
        ("0.5", "1/2", True),
        ("50", "50%", True),
        ("0.5", "50%", True),
        ("7", "8", False),
        ("2.5", "5/2", True),
        # binary float noise is not another answer (25 * 0.28 = 7.000000000000001)...
        ("25 * 0.28", "7", True),
        ("0.57 * 100", "57", True),
        # ...but a near miss is
        ("7.01", "7", False),
    ]
    for pct in (True, False):
        v = Verify({"kind": "math_pot", "percent_equals_fraction": pct})
        try:
            res = v([rec(p, a) for p, a, _ in cases])
        finally:
            v.close()
        kept = {r.id for r in res.kept}
        for p, a, ok in cases:
            expect = ok and not (a == "50%" and p == "0.5" and not pct)
            assert (f"{p}|{a}" in kept) == expect, (p, a, pct)


def _codet_run(tmp_path, script: str, **verify):
    from filters.verify import Verify

    data = yaml.safe_load((ROOT / "recipes" / "code.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / script)}}
    p = tmp_path / "code.yaml"
    p.write_text(yaml.safe_dump(data))
    recipe = load_recipe(p)
    gen = CodeCodeT(recipe, extract_seeds(recipe.seeds))
    res = gen.run(gen.plan(0, 2), FakeEngine(DATA / script), Sampling())
    v = Verify({"kind": "codet", "timeout_s": 2, **verify})
    try:
        return res, v(res.kept)
    finally:
        v.close()


def test_codet_copies_of_one_candidate_are_no_consensus(tmp_path):
    """Three copies of `return sum(nums)` (a comment, spacing, a docstring apart) are one group of
    weight 3: they cannot form a consensus of distinct candidates on their own."""
    res, out = _codet_run(tmp_path, "fake_code_copies.json")
    r = res.kept[0]
    assert len(r.fields["candidates"]) == 4  # every sample is kept: copies carry CodeT's weight
    assert not out.kept
    assert {j.reason for j in out.rejects} == {"verify:codet_small_consensus"}
    assert r.fields["codet_candidates"] == 2  # sum(nums) (3 samples) and return 0
    assert r.fields["codet_consensus"] == 1 and r.fields["codet_tests_passed"] == 4
    assert r.fields["codet_score"] == 3 * 4


def test_codet_needs_enough_passing_tests(tmp_path):
    res, out = _codet_run(tmp_path, "fake_code.json", codet_min_tests=5)
    assert not out.kept and {j.reason for j in out.rejects} == {"verify:codet_few_tests"}
    res, out = _codet_run(tmp_path, "fake_code.json", codet_min_consensus=3)
    assert not out.kept and {j.reason for j in out.rejects} == {"verify:codet_small_consensus"}
    res, out = _codet_run(tmp_path, "fake_code.json")  # the recipe's defaults: 2 candidates, 3 tests
    assert len(out.kept) == 2
    assert all(r.fields["codet_consensus"] >= 2 and r.fields["codet_tests_passed"] >= 3 for r in out.kept)


def test_normalized_ast_ignores_comments_docstrings_and_spacing():
    from synthflow.generators.code_codet import normalized_ast

    a = "def f(x):\n    return x + 1"
    b = 'def f(x):\n    """Add one."""\n    # comment\n    return (x+1)'
    c = "def f(x):\n    return 1 + x"
    assert normalized_ast(a) == normalized_ast(b) != normalized_ast(c)
