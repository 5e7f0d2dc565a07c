"""Golden prompt, tolerant parsing and its reject reasons for the PAL math generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.generators.base import ParseError
from synthflow.generators.math_pal import MathPAL, clean_answer, parse_pal
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import assert_golden, math_recipe

GOOD = """Problem: Sara buys 5 boxes of pears. Each box holds 6 pears. How many pears?
Program:
```python
def solution():
    return 5 * 6
```
Answer: 30"""


def test_parse_good():
    f = parse_pal(GOOD)
    assert f == {
        "problem": "Sara buys 5 boxes of pears. Each box holds 6 pears. How many pears?",
        "program": "def solution():\n    return 5 * 6",
        "answer": "30",
    }


def test_parse_tolerates_noise_and_no_fence():
    text = "Sure!\nproblem: A cat eats 2 fish a day. How many in 7 days?\n\ndef solution():\n    return 2 * 7\n\nFinal Answer: **$1,4.0 fish**"
    f = parse_pal(text)
    assert f["problem"].startswith("A cat eats")
    assert f["program"].startswith("def solution():")
    assert f["answer"] == "14.0"


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("I cannot help with that.", "no_problem"),
        ("Problem: x\nAnswer: 3", "no_program"),
        ("Problem: x\n```python\ndef f():\n    return 1\n```\nAnswer: 1", "no_solution_function"),
        ("Problem: x\n```python\ndef solution(:\n    return 1\n```\nAnswer: 1", "program_syntax"),
        ("Problem: x\n```python\ndef solution():\n    return 1\n```\n", "no_answer"),
    ],
)
def test_parse_broken(text, reason):
    with pytest.raises(ParseError) as e:
        parse_pal(text)
    assert str(e.value) == reason


@pytest.mark.parametrize(
    "raw,want", [("$1,200.50 dollars", "1200.50"), ("-3 degrees", "-3"), ("3/4", "3/4"), ("50%", "50%")]
)
def test_clean_answer(raw, want):
    assert clean_answer(raw) == want


def _gen(tmp_path):
    recipe = load_recipe(math_recipe(tmp_path))
    seeds = extract_seeds(recipe.seeds)
    return MathPAL(recipe, seeds)


def test_golden_prompt(tmp_path):
    gen = _gen(tmp_path)
    item = gen.plan(0, 1)[0]
    msgs = gen.templates["generate"].render(**gen.context(item))
    text = "\n".join(f"<<{m['role']}>>\n{m['content']}" for m in msgs)
    assert_golden("math_pal_item0.txt", text)
    assert gen.templates["generate"].version == "3"


def test_generate_records_and_parse_rejects(tmp_path):
    gen = _gen(tmp_path)
    items = gen.plan(0, 40)
    eng = FakeEngine(Path(__file__).parent / "data" / "fake_math.json")
    res = gen.generate(items, eng, Sampling())
    assert len(res.kept) + len(res.rejects) == 40
    assert {j.reason for j in res.rejects} == {"parse:no_program"}
    r = res.kept[0]
    assert r.messages[0]["role"] == "user" and r.messages[1]["role"] == "assistant"
    assert r.prompt_template == "math/pal.jinja2" and r.prompt_version == "3"
    assert r.gen["model"] == "fake-model" and r.gen["completion_tokens"] > 0
    assert set(r.fields) <= set(MathPAL.columns) and {"problem", "program", "answer"} <= set(r.fields)
    # planning is deterministic: the same item index always gets the same seed
    assert [i.seed.seed_id for i in gen.plan(0, 40)] == [i.seed.seed_id for i in _gen(tmp_path).plan(0, 40)]


def _sc_record(i: int, votes: list[str | None]):
    """Samples compute from the problem's numbers; 'L<n>' only returns n, '1/0' fails, None did not compile."""
    from synthflow.record import Record

    def prog(v: str | None) -> str | None:
        if v is None:
            return None
        if v.startswith("L"):
            return f"def solution():\n    return {v[1:]}"
        if v == "1/0":
            return "def solution():\n    a = 20\n    b = 0\n    return a / b"
        return f"def solution():\n    a = 20\n    b = 8\n    return a + b + {int(v) - 28}"

    return Record(
        id=f"r{i}",
        recipe="math",
        generator="math_pal",
        seed_id="s",
        fields={
            "problem": "Ann has 20 pens and buys 8 more. How many pens does she have?",
            "program": "def solution():\n    pens = 20\n    bought = 8\n    return pens + bought",
            "answer": "28",
            "sc_programs": [prog(v) for v in votes],
        },
    )


@pytest.mark.parametrize(
    "votes, reason, agreement",
    [
        (["28", "28", "28", "30"], "", 0.75),
        (["30", "31"], "verify:self_consistency_tie", 0.0),  # the main program does not break ties
        (["28", "30"], "verify:self_consistency_tie", 0.5),
        (["28", "28", "30", "31"], "verify:self_consistency_weak", 0.5),  # a majority, but 2 of 4
        (["30", "30", "28", None], "verify:self_consistency_disagrees", 0.25),
        ([None, None, None, None], "verify:self_consistency_no_votes", 0.0),
        (["28", "28", "28", "1/0"], "", 0.75),  # a failing sample is a vote against, not a crash
        (["L28", "L28", "L28", "28"], "verify:self_consistency_weak", 0.25),  # literal votes are void
    ],
)
def test_self_consistency_vote(votes, reason, agreement):
    from filters.verify import Verify

    f = Verify({"kind": "math_pot", "timeout_s": 5})
    try:
        r = _sc_record(0, votes)
        res = f([r])
    finally:
        f.close()
    got = res.rejects[0].reason if res.rejects else ""
    assert got == reason
    assert r.fields["sc_agreement"] == agreement
    assert len(r.fields["sc_votes"]) == len(votes)


def test_self_consistency_samples_in_one_call(tmp_path):
    import json

    script = json.loads((Path(__file__).parent / "data" / "fake_math.json").read_text())
    script.insert(0, {"match": "^Ann has", "reply": ["\n    return 3 * 4\n```", " (:\n```"]})
    path = tmp_path / "sc.json"
    path.write_text(json.dumps(script))
    recipe = load_recipe(math_recipe(tmp_path, generator__options__self_consistency=4))
    gen = MathPAL(recipe, extract_seeds(recipe.seeds))
    eng = FakeEngine(path)
    res = gen.generate(gen.plan(0, 40), eng, Sampling())
    assert eng.calls == 2, "one call for the problems, one for every self-consistency sample"
    ann = [r for r in res.kept if r.fields["problem"].startswith("Ann has")]
    assert ann
    for r in ann:  # samples alternate: a good program, then one that does not compile (kept as a null vote)
        assert r.fields["sc_programs"][0].endswith("return 3 * 4") and r.fields["sc_programs"][1] is None
        assert len(r.fields["sc_programs"]) == 4
    summary = gen.summary(ann)
    assert summary["sc"]["majority_rows"] == 0 and "k=4" in summary["self_consistency"]


def test_huge_numbers_from_programs_are_verdicts_not_crashes():
    """A program may return an int too large for a float (a default math run crashed on one)."""
    from filters.verify import Verify

    r = _sc_record(0, ["28", "28", "28", "28"])
    r.fields["sc_programs"][3] = "def solution():\n    a = 20\n    b = 8\n    return (a + b) ** 400"
    big = _sc_record(1, [])
    big.fields["program"] = (
        "def solution():\n    pens = 20\n    bought = 8\n    return (pens + bought) ** 400"
    )
    f = Verify({"kind": "math_pot", "timeout_s": 5})
    try:
        res = f([r, big])
    finally:
        f.close()
    assert [x.id for x in res.kept] == ["r0"] and r.fields["sc_agreement"] == 0.75
    assert len(r.fields["sc_votes"][3]) > 500  # the huge vote keeps its digits
    assert [j.reason for j in res.rejects] == ["verify:answer_mismatch"]
