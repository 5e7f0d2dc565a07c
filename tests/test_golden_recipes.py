"""Every shipped recipe, run end to end through the flow on a scripted engine: its published rows,
its rejects and its summary counts are pinned in ``tests/golden/recipes/<recipe>.json``.

A change that alters what a recipe publishes shows up here as a diff to review. A refactor must
leave these files unchanged; a change of behaviour updates them on purpose
(``SYNTHFLOW_UPDATE_GOLDEN=1``) and says so in its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import DATA, assert_golden, fake_recipe
from .helpers import VOLATILE, assert_funnel_adds_up, table_rows

RECIPES: dict[str, dict] = {
    "math": {"script": "fake_math.json", "generator__options__self_consistency": 0},
    "persona_math": {"script": "fake_math.json", "generator__options__self_consistency": 0},
    "code": {"script": "fake_code.json"},
    # the judge samples rows by id, and ids differ per run: every row is judged here
    "self_instruct": {"script": "fake_self_instruct.json", "scoring__judge__sample": 1.0},
    "self_instruct_revise": {"script": "fake_self_instruct.json", "scoring__judge__sample": 1.0},
    "skillmix": {"script": "fake_skillmix.json", "scoring__judge__sample": 1.0},
    "agentinstruct": {"script": "fake_agentinstruct.json", "scoring__judge__sample": 1.0},
    # the first five GSM8K train problems: the anchored script writes a template for each
    "math_templates": {"script": "fake_templates_anchored.json", "seeds": [{"source": "gsm8k", "limit": 5}]},
    "bonito": {
        "script": "fake_bonito.json",
        "seeds": [{"source": "docs", "path": str(DATA / "docs"), "chunk_words": 200}],
    },
    "ensemble": {"script": "fake_ensemble.json"},
    "ifeval_style": {"script": "fake_ifeval.json"},
    "ifeval_rag": {"script": "fake_ifeval.json"},
}
SIZE = {"n": 4, "batch_size": 8, "max_items": 16}


def _canonical(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k not in VOLATILE}, sort_keys=True, default=str)


def golden(summary: dict) -> str:
    run_dir = Path(summary["path"])
    data, rej = table_rows(run_dir, "data"), table_rows(run_dir, "rejects")
    # a reason that names another row (dedup:exact:<id>) names it by item: ids differ per run
    items = {r["id"]: f"<item {r['item']}>" for r in data + rej}

    def reason(text: str) -> str:
        return ":".join(items.get(p, p) for p in text.split(" (")[0].split(":"))

    rows = sorted(_canonical(r) for r in data)
    rejects = sorted(json.dumps([r["item"], r["reject_stage"], reason(r["reject_reason"])]) for r in rej)
    out = {
        "counts": summary["counts"],
        "rejects_by_stage": dict(sorted(summary["rejects_by_stage"].items())),
        "over_target": summary.get("over_target", 0),
        "rows": [json.loads(r) for r in rows],
        "rejects": [json.loads(r) for r in rejects],
    }
    return json.dumps(out, indent=1, sort_keys=True, default=str) + "\n"


def test_every_shipped_recipe_is_pinned():
    shipped = {p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml")}
    assert shipped == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_recipe_publishes_its_pinned_rows(name, tmp_path, prefect_harness, monkeypatch):
    from flows.recipe_flow import run_recipe
    from synthflow.spec import Overrides

    changes = dict(RECIPES[name])
    script = changes.pop("script")
    recipe = fake_recipe(tmp_path, name, script, **SIZE, **changes)
    monkeypatch.setenv("SYNTHFLOW_RESPONSE_CACHE", str(tmp_path / "cache.sqlite3"))
    summary = run_recipe(recipe=str(recipe), overrides=Overrides(out=str(tmp_path / "out")))
    assert_funnel_adds_up(summary)
    assert_readme_queries_run(tmp_path / "out")
    assert_golden(f"recipes/{name}.json", golden(summary))


def assert_readme_queries_run(out: Path) -> None:
    """Every `synthflow query` of the README, and its re-threshold query, runs as written on this
    recipe's output (they used to name math's columns)."""
    import re

    from synthflow.cli import main

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    queries = re.findall(r'^synthflow query "(.+?)"', readme, re.M)
    rethreshold = re.search(r"threshold is a query: `(SELECT .+?)`", readme, re.S)
    assert len(queries) >= 3 and rethreshold
    for sql in [*queries, " ".join(rethreshold.group(1).split())]:
        assert main(["query", sql, "--out", str(out), "--format", "json"]) == 0, sql
