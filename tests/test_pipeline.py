"""A run that can cross processes: pipelined batches give the sequential run's rows,
a retried generate gives a clean run's rows, overlapping runs are safe, and the Prefect graph
follows the data's way."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthflow.model import default_model_dir

from .conftest import fake_recipe, math_recipe, synthflow_exe
from .helpers import content, reasons, run_flow, table_rows, task_upstreams

CASES = {
    # math: n reached in the 2nd batch while the 3rd is being made (discarded)
    "math": lambda tmp: math_recipe(tmp, n=6, batch_size=16, max_items=160, engine__options__delay_s=0.05),
    # self_instruct: generator state (pool, rounds) changes every batch; the judge takes every row
    # (its sample is drawn by row id, and row ids differ per run)
    "self_instruct": lambda tmp: fake_recipe(
        tmp,
        "self_instruct",
        "fake_self_instruct.json",
        n=4,
        batch_size=2,
        max_items=12,
        engine__options__delay_s=0.05,
        scoring__judge__sample=1.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipelined_run_publishes_the_sequential_rows(case, tmp_path, prefect_harness, monkeypatch):
    from flows.recipe_flow import run_recipe

    recipe = CASES[case](tmp_path)
    seq = run_flow(
        run_recipe, recipe, tmp_path / "seq", tmp_path / "seq.sqlite3", monkeypatch, sets=["pipeline=false"]
    )
    pip = run_flow(run_recipe, recipe, tmp_path / "pip", tmp_path / "pip.sqlite3", monkeypatch)
    assert seq["pipeline"] is False and pip["pipeline"] is True
    a, b = Path(seq["path"]), Path(pip["path"])
    assert content(a) and content(a) == content(b)
    assert reasons(a) == reasons(b)
    assert seq["counts"] == pip["counts"] and seq["items_planned"] == pip["items_planned"]
    assert seq["items_discarded"] == 0
    if case == "math":
        assert pip["items_discarded"] == 16  # the batch made ahead was not needed, and undone
    for s in (seq, pip):
        t = s["timing"]
        assert t["wall_s"] > 0 and 0 <= t["engine_ready_s"] < t["wall_s"]
        # each engine call sleeps 0.05 s: at least that is busy time, and never more than the wall
        assert 0.05 <= t["engine_busy_s"] <= t["wall_s"]


def test_a_generate_that_fails_once_is_retried_with_the_same_rows(tmp_path, prefect_harness, monkeypatch):
    """The fake engine fails on call 2 (the classify step of batch 1), after Self-Instruct's first
    step changed its pool and round counter. The retry must start from the state before the batch:
    otherwise it renders other prompts (machine instructions in context), its instructions are
    ROUGE duplicates of themselves, and the rows differ from a clean run's."""
    import flows.recipe_flow as rf

    monkeypatch.setattr(rf, "generate", rf.generate.with_options(retry_delay_seconds=0))
    judge_all = {"scoring__judge__sample": 1.0}  # judge samples are drawn by row id (per run)
    clean = fake_recipe(
        tmp_path, "self_instruct", "fake_self_instruct.json", n=4, batch_size=2, max_items=8, **judge_all
    )
    failing = fake_recipe(
        tmp_path,
        "self_instruct",
        "fake_self_instruct.json",
        name="failing.yaml",
        n=4,
        batch_size=2,
        max_items=8,
        engine__options__fail_call=2,
        **judge_all,
    )
    ref = run_flow(rf.run_recipe, clean, tmp_path / "ref", tmp_path / "ref.sqlite3", monkeypatch)
    got = run_flow(rf.run_recipe, failing, tmp_path / "got", tmp_path / "got.sqlite3", monkeypatch)
    assert got["cache"]["hits"] >= 1  # the retry found the first step's answers in the cache
    assert content(Path(ref["path"])) and content(Path(ref["path"])) == content(Path(got["path"]))
    assert ref["generator"]["bootstrap rounds"] == got["generator"]["bootstrap rounds"]


def test_tasks_take_data_and_the_graph_follows_the_data(tmp_path, prefect_harness):
    """Each stage task's input is the previous stage's result: extract-seeds -> generate -> verify ->
    dedup -> score -> accept -> write, read back from the Prefect API."""
    from flows.recipe_flow import run_recipe

    s = run_recipe(recipe=str(math_recipe(tmp_path, n=2, batch_size=16, max_items=32)))
    assert s["counts"]["accepted"] == 2
    upstream = task_upstreams()
    assert upstream["verify"] == {"generate"}
    assert upstream["dedup"] == {"verify"}
    assert upstream["score"] == {"dedup"}
    assert upstream["accept"] == {"score"}
    assert upstream["generate"] == {"extract-seeds"}  # the first batch's (the test in test_flow.py)
    assert upstream["write"] == {"accept"}  # the last batch's


def _cli_run(recipe: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [synthflow_exe(), "run", str(recipe), "--out", str(out)],
        env={**os.environ, **env},
        cwd=recipe.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_runs_started_together_publish_no_row_twice(tmp_path):
    """Two `synthflow run` of one recipe against one --out, at once, whose answers repeat across
    runs (40 topics, 3 scripted problems; each run alone would publish the 3). Both have loaded the
    cross-run index before either generates (the scripted engine waits for the test). Distinct run
    ids, disjoint items, both exit 0, and together they publish each problem once: the run that
    published second dropped the 3 at its publish, as dedup rejects naming the first run's rows. The
    index holds every published row."""
    script = Path(__file__).parent / "data" / "fake_math_fixed.json"
    go = tmp_path / "go"
    engine = {"name": "fake", "options": {"script": str(script), "delay_s": 0.3, "wait_file": str(go)}}
    # SYNTHFLOW_CACHE moves the cache home (no embedded model there): name its tokenizer instead
    tok = str(default_model_dir())
    recipe = math_recipe(
        tmp_path, n=3, batch_size=8, max_items=40, engine=engine, output__target_tokenizer=tok
    )
    out = tmp_path / "out"
    env = {
        "SYNTHFLOW_RESPONSE_CACHE": str(tmp_path / "shared.sqlite3"),
        "SYNTHFLOW_CACHE": str(tmp_path / "home"),
    }
    procs = [_cli_run(recipe, out, env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while len(list(tmp_path.glob("go.*"))) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.1)
        go.touch()  # both runs are at their first engine call, their indexes loaded
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, results, strict=True):
        assert p.returncode == 0, e[-2000:]
        assert "(resumed)" not in o
    dirs = sorted(d.parent for d in out.glob("math/*/_SUCCESS"))
    assert len(dirs) == 2
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    assert len({s["run_id"] for s in summaries}) == 2
    ranges = sorted((s["item_offset"], s["item_offset"] + s["items_planned"]) for s in summaries)
    assert ranges[0][1] <= ranges[1][0], ranges  # disjoint item ranges
    rows = [[r for f in (d / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()] for d in dirs]
    problems = [r["problem"] for rs in rows for r in rs]
    assert len(problems) == len(set(problems)) == 3, problems  # no row published twice
    first, second = sorted(range(2), key=lambda k: -len(rows[k]))
    assert len(rows[first]) == 3 and not rows[second]
    assert [summaries[k]["dropped_at_publish"] for k in (first, second)] == [0, 3]
    ids = {r["id"] for r in rows[first]}
    named = {r["reject_reason"].split(":")[2] for r in table_rows(dirs[second], "rejects")
             if r["reject_stage"] == "dedup"}  # fmt: skip
    assert ids <= named  # each of the first run's rows, named by a dedup reject of the second
    # both runs' published rows are in the cross-run index, none lost to a rewrite
    from filters.dedup import ExactDedup, NearDedup
    from synthflow.filtering import FilterContext

    ctx = FilterContext(out_root=out, run_id="probe")
    exact = ExactDedup({"field": "problem"}, ctx)
    near = NearDedup({"field": "problem"}, ctx)
    assert ids <= set(exact.seen.values())
    assert all(i in near.index for i in ids)
