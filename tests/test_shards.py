"""Sharded runs: N shards take disjoint batches from a Redis queue, a merge admits them
in batch order, and the published rows are the one-process run's rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthflow.spec import Overrides
from synthflow.store import completed_runs

from .conftest import ROOT, fake_recipe, math_recipe, run_cli
from .helpers import content, reasons, run_flow


def _recipe(tmp_path: Path, **kw) -> Path:
    # n reached in the 2nd batch of 16; a dup-heavy script, so admission order matters
    return math_recipe(tmp_path, n=6, batch_size=16, max_items=160, engine__options__delay_s=0.05, **kw)


def _no_retry_delay(monkeypatch, retries: int | None = None):
    import flows.recipe_flow as rf

    opts = {"retry_delay_seconds": 0} | ({"retries": retries} if retries is not None else {})
    monkeypatch.setattr(rf, "run_shard", rf.run_shard.with_options(**opts))
    if retries is not None:
        monkeypatch.setattr(rf, "SHARD_RETRIES", retries)
    return rf


def test_two_local_shards_publish_the_one_process_rows(tmp_path, prefect_harness, monkeypatch):
    rf = _no_retry_delay(monkeypatch)
    recipe = _recipe(tmp_path)
    one = run_flow(rf.run_recipe, recipe, tmp_path / "one", tmp_path / "one.sqlite3", monkeypatch)
    two = run_flow(rf.run_recipe, recipe, tmp_path / "two", tmp_path / "two.sqlite3", monkeypatch, shards=2)
    a, b = Path(one["path"]), Path(two["path"])
    assert content(a) and content(a) == content(b)
    assert reasons(a) == reasons(b)
    assert two["counts"]["accepted"] == one["counts"]["accepted"] == 6
    assert two["items_planned"] == one["items_planned"]
    shards = two["shards"]
    assert [s["shard"] for s in shards] == [0, 1]
    batches = [i for s in shards for i in s["batches"]]
    assert len(batches) == len(set(batches))  # no batch made twice
    assert sum(s["cache"]["misses"] for s in shards) == two["cache"]["misses"] > 0
    assert not list((tmp_path / "two").glob(".synthflow-staging/*.shards"))  # staged batches cleaned


def test_a_killed_shard_is_retried_and_the_rows_are_the_same(tmp_path, prefect_harness, monkeypatch):
    """One shard SIGKILLs itself on its 2nd engine call (mid-batch); Prefect retries its task, the new
    process redoes the batch it had claimed, and the merged rows are still the one-process rows."""
    rf = _no_retry_delay(monkeypatch)
    marker = tmp_path / "killed"
    clean = _recipe(tmp_path)
    killing = math_recipe(
        tmp_path,
        name="killing.yaml",
        n=6,
        batch_size=16,
        max_items=160,
        engine__options__delay_s=0.05,
        engine__options__fail_call=2,
        engine__options__kill_file=str(marker),
    )
    one = run_flow(rf.run_recipe, clean, tmp_path / "one", tmp_path / "one.sqlite3", monkeypatch)
    two = run_flow(rf.run_recipe, killing, tmp_path / "two", tmp_path / "two.sqlite3", monkeypatch, shards=2)
    assert marker.is_file()  # a shard was killed
    assert content(Path(one["path"])) == content(Path(two["path"]))


def test_a_shard_that_keeps_failing_fails_the_run_and_publishes_nothing(
    tmp_path, prefect_harness, monkeypatch
):
    from synthflow.errors import UserError

    rf = _no_retry_delay(monkeypatch, retries=0)
    recipe = _recipe(tmp_path, engine__options__fail_call=1)  # every shard process fails its first call
    # the first failure stops the other shard, which may end cleanly first: 1 or 2 of 2 failed
    with pytest.raises(UserError, match=r"[12] of 2 shards failed after 1 attempts; nothing was published"):
        run_flow(rf.run_recipe, recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch, shards=2)
    assert completed_runs(tmp_path / "out") == []


def test_revision_in_two_shards_publishes_the_one_process_rows(tmp_path, prefect_harness, monkeypatch):
    """A recipe with `revise`: each shard revises its batches' rejects and checks the revisions; the
    merge admits each batch's passes in the one-process run's order."""
    from .test_revise import _script

    rf = _no_retry_delay(monkeypatch)
    recipe = math_recipe(tmp_path, n=50, batch_size=16, max_items=32, revise={"rounds": 2},
                         engine__options__script=str(_script(tmp_path)))  # fmt: skip
    one = run_flow(rf.run_recipe, recipe, tmp_path / "one", tmp_path / "one.sqlite3", monkeypatch)
    two = run_flow(rf.run_recipe, recipe, tmp_path / "two", tmp_path / "two.sqlite3", monkeypatch, shards=2)
    a, b = Path(one["path"]), Path(two["path"])
    assert one["revision"]["rescued_rows"] > 0
    # ids (and so revised_from, and the row a duplicate is of) are per run; the rest is the same
    assert _no_ids(content(a)) == _no_ids(content(b)) and reasons(a) == reasons(b)
    assert two["revision"] == one["revision"] and two["counts"] == one["counts"]


def _no_ids(rows: list[str]) -> list[str]:
    import json

    return sorted(json.dumps({k: v for k, v in json.loads(r).items() if k != "revised_from"}) for r in rows)


def test_shards_refuse_a_generator_that_builds_on_earlier_batches(tmp_path):
    recipe = fake_recipe(tmp_path, "self_instruct", "fake_self_instruct.json")
    p = run_cli("run", str(recipe), "--shards", "2", env={"SYNTHFLOW_PROGRESS": "0"})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "self_instruct" in lines[0] and "without --shards" in lines[0]


# ---- on Prefect workers -------------------------------------------------------------------------
def test_two_shards_on_two_process_workers(tmp_path, prefect_harness, monkeypatch, redis_server):
    """A Prefect server on loopback (the harness), a process work pool with 2 workers, a real
    redis-server: the shards run as flow runs on the workers and the merge gives the one-process rows."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    rf = _no_retry_delay(monkeypatch)
    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api, "SYNTHFLOW_RESPONSE_CACHE": str(tmp_path / "two.sqlite3"),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}  # fmt: skip
    prefect = [sys.executable, "-m", "prefect"]
    pool = "synthflow-shards-test"
    subprocess.run(
        [*prefect, "work-pool", "create", pool, "--type", "process"], env=env, check=True, capture_output=True
    )
    url = f"redis://{redis_server['host']}:{redis_server['port']}/0"
    workers = [
        subprocess.Popen(
            [
                *prefect,
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--limit",
                "1",
                "--name",
                f"w{k}",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(2)
    ]
    try:
        recipe = _recipe(tmp_path)
        one = run_flow(rf.run_recipe, recipe, tmp_path / "one", tmp_path / "one.sqlite3", monkeypatch)
        monkeypatch.setenv("SYNTHFLOW_RESPONSE_CACHE", str(tmp_path / "two.sqlite3"))
        two = rf.run_recipe(
            recipe=str(recipe),
            overrides=Overrides(out=str(tmp_path / "two")),
            shards=2,
            work_pool=pool,
            redis=url,
        )
        assert content(Path(one["path"])) == content(Path(two["path"]))
        assert [s["shard"] for s in two["shards"]] == [0, 1]
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
            shard_runs = [r for r in runs if r.parameters.get("shard") in (0, 1) and "job" in r.parameters]
            assert len(shard_runs) >= 2 and all(r.state.is_completed() for r in shard_runs)
            assert len({r.work_pool_name for r in shard_runs}) == 1
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()


def test_a_staged_batch_made_from_other_items_is_not_reused(tmp_path):
    """A resumed run whose seed file changed keeps its fingerprint (paths are hashed, not
    contents): batches staged before the change must be made again, not merged."""
    from synthflow.pipeline import BatchResult
    from synthflow.recipe import load_recipe
    from synthflow.shard import Batch, batch_items, batch_key, load_batch, save_batch, shard_dir
    from synthflow.spec import RunSpec
    from synthflow.stages import Stages

    recipe = load_recipe(_recipe(tmp_path))
    spec = RunSpec(recipe, "r.yaml", "rid", recipe.fingerprint())
    st = Stages(spec)
    try:
        items = batch_items(spec, st, 0)
        d = shard_dir(spec)
        save_batch(d, Batch(0, len(items), BatchResult([]), 0, batch_key(spec, items)))
        assert load_batch(d, 0, batch_key(spec, items)) is not None
        items[0].seed.data["question"] = "edited after the batch was staged"
        assert load_batch(d, 0, batch_key(spec, items)) is None
    finally:
        st.close()
