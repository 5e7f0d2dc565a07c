"""CoachLM-style revision: rows rejected for a fixable reason are rewritten and go
through verification, dedup, scoring and the thresholds again; a revision is never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from .conftest import DATA, math_recipe
from .helpers import run_flow, task_upstreams

FIXED = (
    "Problem: A garden has 5 rows of 9 tulips and 15 are picked. How many tulips remain now?\nProgram:\n"
    "```python\ndef solution():\n    rows = 5\n    per_row = 9\n    picked = 15\n    return rows * per_row - picked\n"
    "```\nAnswer: 30"
)
# a revision that only states its answer: it must fail verification again, not pass for being revised
STATED = "Problem: Mia saves money. How many dollars?\nProgram:\n```python\ndef solution():\n    return 41\n```\nAnswer: 41"


def _script(tmp_path):
    rules = json.loads((DATA / "fake_math.json").read_text())
    rules = [
        {"match": "garden[\\s\\S]*Checker's reason: verify:", "reply": FIXED},
        {"match": "Mia saves[\\s\\S]*Checker's reason: verify:", "reply": STATED},
        *rules,
    ]
    p = tmp_path / "script.json"
    p.write_text(json.dumps(rules))
    return p


def _rows(run_dir, sub):
    return [r for f in sorted((run_dir / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_revision_rescues_a_failed_row_and_rechecks_it(tmp_path, prefect_harness, monkeypatch):
    from flows.recipe_flow import run_recipe

    recipe = math_recipe(tmp_path, n=50, batch_size=16, max_items=32, revise={"rounds": 2},
                         engine__options__script=str(_script(tmp_path)))  # fmt: skip
    s = run_flow(run_recipe, recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    run_dir = Path(s["path"])
    data, rej = _rows(run_dir, "data"), _rows(run_dir, "rejects")
    by_id = {r["id"]: r for r in data + rej}
    revised = [r for r in data if r["revised_from"]]
    assert revised, "no row was rescued"
    for r in revised:
        orig = by_id[r["revised_from"]]
        assert orig["reject_stage"] == "verify" and orig["reject_reason"].startswith("verify:")
        assert r["revision_round"] == 1 and r["revision_reason"] == orig["reject_reason"]
        assert json.loads(r["revision_original"])[0]["content"] == orig["problem"]
        assert r["program"] != orig["program"] and "rows * per_row - picked" in r["program"]
        assert r["verify_status"] == "pass"  # verified again, in the sandbox
        assert r["score_ifd"] is not None  # and scored again
        assert r["revision_prompt"] == "revise/math.jinja2@1"
    # a revision that only states its answer is verified again and rejected as trivial; the second
    # round's revision of it changes nothing and is rejected as unchanged
    stated = [r for r in rej if r["revised_from"] and "return 41" in (r["program"] or "")]
    assert {
        (r["reject_stage"], r["reject_reason"].split(":")[1]) for r in stated if r["revision_round"] == 1
    } == {("verify", "trivial_program")}
    assert any(r["reject_reason"] == "revise:unchanged" and r["revision_round"] == 2 for r in rej)
    rv = s["revision"]
    assert rv["rescued_rows"] == len(revised) and set(rv["rescued"]) == {
        revised[0]["revision_reason"].split(" ")[0]
    }
    assert sum(rv["tried"].values()) >= len(revised) + len(stated)
    # the ledger: every generated row (revisions included) is data or a reject
    assert len(data) + len(rej) == s["counts"]["generated"]
    # the Prefect graph: revision takes the checks' results, and the revised rows are checked again
    up = task_upstreams()
    assert {"verify", "score", "accept"} <= up["revise"] and "generate" not in up["revise"]
    assert up["verify"] == {"generate", "revise"}


def test_without_revise_nothing_is_revised(tmp_path, prefect_harness, monkeypatch):
    from flows.recipe_flow import run_recipe

    recipe = math_recipe(
        tmp_path, n=50, batch_size=16, max_items=16, engine__options__script=str(_script(tmp_path))
    )
    s = run_flow(run_recipe, recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    assert s["revision"] is None
    assert (
        "revised_from" not in pq.read_table(next((Path(s["path"]) / "data").glob("*.parquet"))).column_names
    )


def test_summary_counts_rescues_and_revisions_that_came_too_late():
    from collections import Counter

    from synthflow import revise as revising
    from synthflow.record import Record, Reject
    from synthflow.summary import format_summary

    def rec(i, reason=None):
        f = {"revised_from": f"orig{i}", "revision_reason": reason} if reason else {}
        return Record(id=f"r{i}", recipe="x", generator="g", seed_id="s", fields=f)

    accepted = [rec(1, "quality:judge<5 (3)"), rec(2)]
    rejects = [Reject(rec(3, "shirker:evasive"), "accept", "over_target"), Reject(rec(4), "accept", "over_target"),
               Reject(rec(5, "quality:judge<5 (2)"), "accept", "quality:judge<5 (2)")]  # fmt: skip
    s = revising.summary(accepted, Counter({"quality:judge": 2, "shirker:evasive": 1}), 1, rejects)
    assert s["rescued"] == {"quality:judge": 1} and s["rescued_rows"] == 1
    assert s["passed_over_target"] == {"shirker:evasive": 1}
    from synthflow.ledger import FUNNEL

    base = {"recipe": "x", "run_id": "r", "engine": "fake", "model": "m", "counts": dict.fromkeys(FUNNEL, 0),
            "cache": {"hits": 0, "misses": 0}, "tokens": {"prompt": 0, "completion": 0}, "engine_seconds": 0,
            "top_rejects": [], "wall_seconds": 1.0}  # fmt: skip
    text = format_summary({**base, "revision": s})
    assert (
        "revision: 3 tried, 1 rescued (quality:judge 1); 1 more passed every check after the target" in text
    )


def test_a_revision_that_talks_about_revising_is_not_an_answer():
    """Seen on the embedded model: "revised" rows that passed the judge but describe the revision."""
    from synthflow.revise import talks_about_revising

    def pair(instruction, answer):
        return [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]

    leaks = [
        "Complicated: How to make a simple pizza\n\nI've rewritten the response to fix the detail mentioned",
        "You've already addressed the request and rewritten it to focus on the requested instruction.",
        "Here is the revised response: Paris.",
        "The original answer was wrong; the capital is Paris.",
        "Following the reviewer's notes, the capital is Paris.",
        "I have corrected the list: red, green, blue.",
        "I\u2019ve fixed the issue. The capital is Paris.",
        "**Improved Response:**\nThe capital is Paris.",
        "As the reviewer pointed out, the capital is Paris.",
        "The capital is Paris.\n\nChanges made:\n- named the city",
    ]
    for text in leaks:
        assert talks_about_revising(pair("Name the capital of France.", text)), text
    assert not talks_about_revising(pair("Name the capital of France.", "The capital of France is Paris."))
    # the edit the user asked for does not count: "Rewrite ..." -> "Rewritten: ...", "Fix ..." -> "I've fixed"
    for ask, ans in [("Rewrite this sentence in the passive voice: the dog bit the man.", "Rewritten: The man was bitten."),
                     ("Fix the bug in: print(x", "I've fixed the missing parenthesis: print(x)"),
                     ("Please revise this paragraph: The cat sat.", "Here is the revised paragraph: The cat rested."),
                     ("Solve 2x + 4 = 10.", "We can rewrite the equation as 2x = 6, so x = 3.")]:  # fmt: skip
        assert not talks_about_revising(pair(ask, ans)), ans
    # the user's own words do not count: a rewriting task may say "rewritten"
    assert not talks_about_revising(
        pair("Rewrite in the passive voice: the cat ate fish.", "Rewrite: fish was eaten.")
    )
    assert not talks_about_revising(
        pair(
            "Rewrite it.", "```python\ndef solution():\n    revised_total = 3\n    return revised_total\n```"
        )
    )
