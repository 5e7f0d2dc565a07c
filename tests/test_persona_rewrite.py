"""Persona rewrites (PersonaMath): the persona restates a seed problem with a known answer,
numbers and question kept, and the program must compute the seed's answer. A rewrite that lost a
number, barely changed the wording, or computes another answer (even one it states consistently)
is rejected with its reason; the row keeps the original and the reference."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from synthflow import registry
from synthflow.errors import UserError
from synthflow.generators.math_pal import (
    numbers_in,
    reference_answer,
    rewrite_problem_reason,
    rewrite_program_reason,
)
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import assert_golden, fake_recipe
from .helpers import run_local

SEEDS = [
    {"id": "s-pears", "problem": "Sara buys 5 boxes of pears. Each box holds 6 pears. She eats 2 pears. How many pears are left?", "answer": "28"},
    {"id": "s-pens", "problem": "A notebook costs 3 dollars and a pen costs 2 dollars. Liam buys 4 notebooks and 3 pens. How many dollars does he spend?", "answer": "18"},
    {"id": "s-eggs", "problem": "A hen lays 7 eggs a week. How many eggs does it lay in 4 weeks?", "answer": "28"},
    {"id": "s-cards", "problem": "Ana has 12 cards and gives 5 to Ben. How many cards does Ana have left?", "answer": "7"},
]  # fmt: skip


def _reply(problem: str, program: str, answer: str) -> str:
    return f"Problem: {problem}\nProgram:\n```python\n{program}\n```\nAnswer: {answer}"


SCRIPT = [
    # a real rewrite: the same numbers and question, another setting; computes 28
    {"match": "Original: Sara buys", "reply": _reply(
        "I bake 5 trays of rolls for the market with 6 rolls on each tray, and I eat 2 of them. How many rolls can I sell?",
        "def solution():\n    trays = 5\n    per_tray = 6\n    eaten = 2\n    return trays * per_tray - eaten", "28")},
    # numbers kept and the stated answer matches the program, but the math changed: 3*4 + 2 = 14, not 18
    {"match": "Original: A notebook", "reply": _reply(
        "In my shop a sketchbook costs 3 dollars and a brush costs 2 dollars. A painter buys 4 sketchbooks and 3 brushes. How many dollars does she pay?",
        "def solution():\n    sketchbook = 3\n    brush = 2\n    books = 4\n    return sketchbook * books + brush", "14")},
    # the 4 weeks were lost: the seed's answer is no reference for what is left
    {"match": "Original: A hen", "reply": _reply(
        "On my farm one hen lays 7 eggs each week. How many eggs do I collect from it?",
        "def solution():\n    per_week = 7\n    weeks = 4\n    return per_week * weeks", "28")},
    # a copy with one word changed
    {"match": "Original: Ana has", "reply": _reply(
        "Ana has 12 cards and gives 5 to Tom. How many cards does Ana have left?",
        "def solution():\n    cards = 12\n    given = 5\n    return cards - given", "7")},
]  # fmt: skip


def _recipe(tmp_path, seeds=SEEDS, **changes):
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    (tmp_path / "script.json").write_text(json.dumps(SCRIPT))
    changes = {
        "generator__options__self_consistency": 0,
        "generator__options__persona_mode": "rewrite",
        "seeds": [{"source": "jsonl", "path": str(tmp_path / "seeds.jsonl")}],
        "n": 4,
        "batch_size": 4,
        "max_items": 4,
        "engine__options__script": str(tmp_path / "script.json"),
        **changes,
    }
    return fake_recipe(tmp_path, "persona_math", "fake_math.json", **changes)


def _gen(path):
    r = load_recipe(path)
    return registry.get("generator", r.generator.name)(r, extract_seeds(r.seeds))


def test_rewrite_checks():
    orig = "A rope is 7.5 meters long. It is cut into pieces of 0.25 meters. How many pieces are there?"
    assert numbers_in("It costs $1,200 or $3.50 each, 4 times, at -5 degrees, .25 and three") == {
        1200,
        3.5,
        4,
        -5,
        0.25,
        3,
    }
    assert numbers_in("from 2:15 pm to 3:00 pm") == {2.25, 3} and numbers_in(
        "at 8 am I sort 48", clock=False
    ) == {48}
    assert (
        rewrite_problem_reason(
            orig, "My 7.5 meter climbing rope is cut into 0.25 meter loops. How many loops?"
        )
        is None
    )
    assert rewrite_problem_reason(orig, "My 7 meter rope is cut into 0.25 meter loops. How many loops?") == (
        "rewrite_numbers_changed"
    )
    assert rewrite_problem_reason(orig, orig.replace("rope", "cord")) == "rewrite_unchanged"
    preamble = "As a rock climber who checks every piece of gear before a long weekend trip in the mountains, I ask: "
    assert rewrite_problem_reason(orig, preamble + orig) == "rewrite_unchanged"
    # a rewrite that states the answer (30 pieces) in its problem gives it away
    told = "My 7.5 meter rope makes 30 loops of 0.25 meters. How many loops?"
    assert rewrite_problem_reason(orig, told, "30") == "rewrite_gives_answer"
    assert rewrite_problem_reason(orig, told) is None  # without the answer there is nothing to check
    # number formats are compared by value: $12.00 is $12, 3:00 pm is 3 pm, "three" is 3
    pens = "A pen costs $12.00 and Tom buys three of them at 3:00 pm. How many dollars does he pay?"
    ink = "At my stall an ink pen costs $12, and at 3 pm a student buys 3 pens. What do I charge her in dollars?"
    assert rewrite_problem_reason(pens, ink, "36") is None
    # a time of day that happens to equal the answer does not give it away
    assert rewrite_problem_reason("48 books go on 6 shelves equally. How many per shelf?", "At 8 am I put 48 new books on 6 shelves of my library, the same on each. How many go on a shelf?", "8") is None  # fmt: skip
    # the question must stay; reordered sentences of the original are no rewrite
    pears = "Sara buys 5 boxes of pears. Each box holds 6 pears. She eats 2 pears. How many pears are left?"
    assert (
        rewrite_problem_reason(pears, "I bake 5 trays with 6 rolls on each and eat 2 of them.")
        == "rewrite_no_question"
    )
    shuffled = (
        "Each box holds 6 pears. She eats 2 pears. Sara buys 5 boxes of pears. How many pears are left?"
    )
    assert rewrite_problem_reason(pears, shuffled) == "rewrite_unchanged"
    # a lost minus sign changes the problem
    assert rewrite_problem_reason("It is -5 degrees and rises 8. What is it now?", "My thermometer reads 5 degrees and climbs 8 by noon. What does it read?") == "rewrite_numbers_changed"  # fmt: skip


def test_a_rewrite_program_uses_the_originals_numbers():
    pears = "Sara buys 5 boxes of pears. Each box holds 6 pears. She eats 2 pears. How many pears are left?"
    ok = (
        "def solution():\n    trays = 5\n    per_tray = 6\n    eaten = 2\n    return trays * per_tray - eaten"
    )
    assert rewrite_program_reason(pears, ok) is None
    # the known answer from a hand-worked value, or from the persona's year: not computed from the problem
    assert rewrite_program_reason(pears, "def solution():\n    eaten = 2\n    return 30 - eaten") == "rewrite_program_skips_numbers"  # fmt: skip
    assert rewrite_program_reason(pears, "def solution():\n    year = 2024\n    return year - 1996") == "rewrite_program_skips_numbers"  # fmt: skip
    # one number written another way is allowed (a percent as its fraction always is)
    sale = "A 40 dollar coat is 25% off, and tax adds 3 dollars. What is the price?"
    assert rewrite_program_reason(sale, "def solution():\n    return 40 * (1 - 0.25) + 3") is None
    # extra numbers (the persona's age, a year) are fine; the original's must all be there
    assert rewrite_problem_reason("Tom has 3 bags of 4 apples. How many apples?", "In 2024 I pack 3 crates of 4 mangoes at my stall. How many mangoes?") is None  # fmt: skip


def test_the_seed_answer_decides_and_every_reason_is_kept(tmp_path, monkeypatch):
    s = run_local(_recipe(tmp_path), tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    rows = pq.read_table(next((tmp_path / "out").glob("**/data/*.parquet"))).to_pylist()
    rejects = pq.read_table(next((tmp_path / "out").glob("**/rejects/*.parquet"))).to_pylist()
    assert s["counts"]["accepted"] == 1 and [r["source_problem"] for r in rows] == [SEEDS[0]["problem"]]
    assert rows[0]["reference_answer"] == "28" and rows[0]["persona"] and rows[0]["answer"] == "28"
    why = {r["source_problem"].split()[1]: r["reject_reason"] for r in rejects}
    assert why == {
        "notebook": "verify:reference_mismatch",
        "hen": "parse:rewrite_numbers_changed",
        "has": "parse:rewrite_unchanged",
    }
    assert all(r["reference_answer"] and r["persona"] for r in rejects)
    bad = next(r for r in rejects if r["reject_reason"] == "verify:reference_mismatch")
    assert "the source problem's answer is '18'" in bad["verify_message"]


def test_rewrite_needs_personas_and_seeds_with_answers(tmp_path):
    with pytest.raises(UserError, match="rewrite needs generator.options.personas"):
        _gen(_recipe(tmp_path, generator__options__personas=None))
    seeds = [*SEEDS, {"id": "s-open", "problem": "Make up a problem about trains."}]
    with pytest.raises(UserError, match="seed 's-open' has no answer"):
        _gen(_recipe(tmp_path, seeds=seeds))


def test_golden_rewrite_prompt(tmp_path):
    gen = _gen(_recipe(tmp_path))
    assert gen.templates["generate"].name == "math/pal_persona_rewrite.jinja2"
    msgs = gen.render_examples()[0]
    assert msgs[-2]["content"].startswith("Person: ") and "Original: " in msgs[-2]["content"]
    assert_golden(
        "prompts_persona_rewrite.txt",
        f"{gen.templates['generate'].label}\n" + "\n".join(f"<<{m['role']}>>\n{m['content']}" for m in msgs),
    )


def test_the_shipped_worked_rewrites_pass_their_own_checks():
    from synthflow.trivial import trivial_reason

    from .conftest import ROOT

    rows = [
        json.loads(x) for x in (ROOT / "synthflow/data/math_persona_rewrites.jsonl").read_text().splitlines()
    ]
    seeds = (ROOT / "synthflow/data/math_seeds.jsonl").read_text()
    for r in rows:
        assert rewrite_problem_reason(r["original"], r["problem"], r["answer"]) is None, r["problem"]
        assert rewrite_program_reason(r["original"], r["program"]) is None, r["program"]
        assert not trivial_reason(r["problem"], r["program"], r["answer"])
        ns: dict = {}
        exec(r["program"], ns)
        assert str(ns["solution"]()) == r["answer"]
        assert r["original"] not in seeds  # a seed's own rewrite is not in its prompt


def test_reference_answers_of_gsm8k_style_seeds():
    assert reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72") == "72"
    assert reference_answer("$1,200") == "1200" and reference_answer(28) == "28"
