"""A run without Prefect: the batch loop over one run's stages, its ledger and spec (plain, picklable
data), generator state restored after a failed batch, and a closed run that builds nothing again;
overrides defined once and the CLI's options derived from them."""

from __future__ import annotations

import pickle

import pytest

from synthflow import pipeline
from synthflow.record import StageResult
from synthflow.run import Run
from synthflow.spec import Overrides

from .conftest import fake_recipe, math_recipe


def test_the_batch_loop_counts_every_row_once(tmp_path):
    """process_batch with the ledger as its sink: every generated row is accepted or a reject."""
    run = Run.open(str(math_recipe(tmp_path, n=3, batch_size=16, max_items=16)))
    try:
        res = pipeline.process_batch(run.stages, run.next_items(), sink=run.ledger)
        led = run.ledger
        assert led.counts["generated"] == len(res.generated.kept) + len(res.generated.rejects) == 16
        # what the accept step kept is admitted (a duplicate of an earlier row becomes a dedup
        # reject) up to n; the rest are over-target rejects
        assert 0 < len(led.accepted) <= 3
        assert len(led.accepted) <= sum(len(a.kept) for a in res.accepted())
        assert led.counts["generated"] == len(led.accepted) + len(led.rejects)
    finally:
        run.close()


def test_cli_options_are_derived_from_the_overrides():
    import argparse

    from synthflow.cli import add_override_options, overrides

    p = argparse.ArgumentParser()
    add_override_options(p)
    a = p.parse_args(["--n", "5", "--batch-size", "8", "--set", "seed=3", "--model", "m"])
    ov = overrides(a)
    assert ov == Overrides(n=5, batch_size=8, model="m", sets=["seed=3"])
    assert ov.as_recipe_keys()["engine.model"] == "m" and ov.as_recipe_keys()["seed"] == 3
    assert set(Overrides.recipe_keys()) == {f for f in Overrides.model_fields if f != "sets"}


def test_a_failed_batch_restores_generator_state(tmp_path):
    """Without Prefect: the stage call itself restores the checkpoint when the engine raises."""
    recipe = fake_recipe(
        tmp_path,
        "self_instruct",
        "fake_self_instruct.json",
        n=4,
        batch_size=2,
        max_items=8,
        engine__options__fail_call=2,
    )
    run = Run.open(str(recipe))
    try:
        gen = run.stages.generator
        before = (gen.rounds, list(gen.machine), len(gen.pool))
        with pytest.raises(RuntimeError, match="scripted failure"):
            run.stages.generate(run.next_items())
        assert (gen.rounds, list(gen.machine), len(gen.pool)) == before
    finally:
        run.close()


def test_spec_and_ledger_pickle(tmp_path):
    run = Run.open(str(math_recipe(tmp_path, n=2, batch_size=8, max_items=16)))
    try:
        pipeline.process_batch(run.stages, run.next_items(), sink=run.ledger)
        spec = pickle.loads(pickle.dumps(run.spec))
        assert spec == run.spec and spec.item_start == 0
        copy = pickle.loads(pickle.dumps(run))  # no engine, lock or sandbox inside
        assert copy.ledger.counts == run.ledger.counts and copy._lock is None
    finally:
        run.close()


def test_stage_result_has_no_state():
    """The contract tasks exchange: plain data, picklable."""
    res = StageResult()
    assert pickle.loads(pickle.dumps(res)) == res


def test_a_closed_run_builds_no_new_stages(tmp_path):
    """A retry that fires after its run was closed must not load engines again."""
    from synthflow.stages import stages_for

    run = Run.open(str(math_recipe(tmp_path, n=2, batch_size=8, max_items=16)))
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        stages_for(run.spec)


def test_a_run_that_falls_short_says_so(tmp_path, prefect_harness):
    """Fewer rows than asked: one line in the CLI summary, the card and the report, naming accepted
    vs asked, why it stopped and what to change."""
    from flows.recipe_flow import run_recipe
    from synthflow.summary import format_summary

    from .conftest import math_recipe

    s = run_recipe(recipe=str(math_recipe(tmp_path, n=50, batch_size=8, max_items=16)))
    assert s["counts"]["accepted"] < 50
    line = s["shortfall"]
    assert line.startswith(
        f"target not met: accepted {s['counts']['accepted']} of 50; the budget of 16 items"
    )
    assert "--max-items" in line and line in format_summary(s)
    run_dir = tmp_path / "out" / "math" / s["run_id"]
    assert line in (run_dir / "README.md").read_text()
    assert (run_dir / "report.html").read_text().count("target not met") == 1
    other = tmp_path / "other"  # its own output root: the first run's rows would be duplicates here
    other.mkdir()
    ok = run_recipe(recipe=str(math_recipe(other, n=1, batch_size=8, max_items=16)))
    assert ok["shortfall"] is None and "target not met" not in format_summary(ok)


def test_runs_that_overlap_publish_no_row_twice(tmp_path):
    """Two runs of one recipe opened before either publishes (as when started together), whose
    answers repeat across runs (40 topics, 3 scripted problems): each alone gathers the 3 problems.
    The first publishes them; at its publish the second drops them as dedup rejects naming the first
    run's rows, publishes none, and its summary, funnel and card say so."""
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from synthflow.funnel import funnel_text

    from .conftest import DATA
    from .helpers import assert_funnel_adds_up

    engine = {"name": "fake", "options": {"script": str(DATA / "fake_math_fixed.json")}}
    recipe = str(math_recipe(tmp_path, n=3, batch_size=8, max_items=40, engine=engine))
    runs = [Run.open(recipe), Run.open(recipe)]
    try:
        assert runs[0].run_id != runs[1].run_id
        for run in runs:
            while items := run.next_items():
                pipeline.process_batch(run.stages, items, sink=run.ledger)
        assert [len(r.ledger.accepted) for r in runs] == [3, 3]
        (first, s1), (second, s2) = (r.finish() for r in runs)
    finally:
        for r in runs:
            r.close()
    a = pq.read_table(first / "data").to_pylist()
    assert len(a) == 3 and pq.read_table(second / "data").num_rows == 0
    rejects = pq.read_table(second / "rejects").to_pylist()
    late = {r["reject_reason"] for r in rejects if r["reject_reason"].startswith("dedup:")} & {
        f"dedup:exact:{r['id']}" for r in a}  # fmt: skip
    assert len(late) == 3
    assert s2["dropped_at_publish"] == 3 and s2["counts"]["accepted"] == 0
    assert s2["filters"]["exact_dedup"]["dropped_at_publish"] == 3
    text = funnel_text(s2)
    assert "3 of them published first by an overlapping run" in text and "accepted 0" in text
    assert json.loads((Path(second) / "summary.json").read_text())["dropped_at_publish"] == 3
    assert "published first by an overlapping run" in (Path(second) / "README.md").read_text()
    # the funnel still adds up (each stage's rows are the previous stage's minus its rejects), and
    # every generated row is data or a reject
    assert_funnel_adds_up(s2)
    assert_funnel_adds_up(s1)
    assert s2["counts"]["generated"] == len(rejects)
    # the CLI summary: the shortfall names the rows lost at publish, and no score got a value (one line)
    from synthflow.summary import format_summary

    text = format_summary(s2)
    assert "3 rows were published first by an overlapping run; " in s2["shortfall"]
    assert s2["shortfall"].endswith("run the recipe again to add rows") and s2["shortfall"] in text
    assert "  scores: no row was scored (" in text and "no value" not in text
