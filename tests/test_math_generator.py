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
    assert gen.templates["generate"].version == "2"


def test_generate_records_and_parse_rejects(tmp_path):
    gen = _gen(tmp_path)
    items = gen.plan(0, 40)
    eng = FakeEngine(Path(__file__).parent / "data" / "fake_math.json")
    res = gen.generate(items, eng, Sampling())
    assert len(res.kept) + len(res.rejects) == 40
    assert {j.reason for j in res.rejects} == {"parse:no_program"}
    r = res.kept[0]
    assert r.messages[0]["role"] == "user" and r.messages[1]["role"] == "assistant"
    assert r.prompt_template == "math/pal.jinja2" and r.prompt_version == "2"
    assert r.gen["model"] == "fake-model" and r.gen["completion_tokens"] > 0
    assert set(r.fields) <= set(MathPAL.columns) and {"problem", "program", "answer"} <= set(r.fields)
    # planning is deterministic: the same item index always gets the same seed
    assert [i.seed.seed_id for i in gen.plan(0, 40)] == [i.seed.seed_id for i in _gen(tmp_path).plan(0, 40)]
