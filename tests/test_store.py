"""The output store on its own: rows become typed columns, rejects keep stage and reason, a run is
published whole (staging folder, one rename, then each file), and only completed runs are listed."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from synthflow.recipe import load_recipe
from synthflow.record import Record, Reject
from synthflow.store import CORE_COLUMNS, REJECT_COLUMNS, STAGING, SUCCESS, RunWriter, completed_runs

from .conftest import math_recipe

COLUMNS = {"problem": pa.string(), "answer": pa.string()}


def _record(i: int, split: str | None = None) -> Record:
    fields = {"problem": f"What is {i} + 1?", "answer": str(i + 1)}
    if split:
        fields["split"] = split
    return Record(
        id=f"r{i}",
        recipe="math",
        generator="math_pal",
        seed_id="s",
        item=i,
        fields=fields,
        messages=[
            {"role": "user", "content": fields["problem"]},
            {"role": "assistant", "content": fields["answer"]},
        ],
        scores={"judge": 0.5 + i / 10},
        gen={"model": "m", "engine": "fake", "prompt_tokens": 3, "completion_tokens": 4},
    )


def _writer(tmp_path, rows=3, shard_rows=None) -> RunWriter:
    recipe = load_recipe(math_recipe(tmp_path, **({"output__shard_rows": shard_rows} if shard_rows else {})))
    recipe = recipe.model_copy(
        update={"output": recipe.output.model_copy(update={"root": str(tmp_path / "out")})}
    )
    w = RunWriter(tmp_path / "out", recipe, "20261206T000000-abcdef", COLUMNS, ["judge", "echo"])
    w.add([_record(i) for i in range(rows)], [Reject(_record(9), "verify", "verify:fail:AssertionError")])
    return w


def test_published_rows_are_typed_columns_and_rejects_keep_stage_and_reason(tmp_path):
    w = _writer(tmp_path)
    out = w.finalize({"counts": {"accepted": 3}})
    assert (out / SUCCESS).is_file() and not w.staging.exists()
    data = pq.read_table(out / "data")
    core = [n for n, _ in CORE_COLUMNS]
    assert data.schema.names[: len(core)] == core
    assert data.schema.field("problem").type == pa.string()
    # declared scores are columns even when no row has one (echo), so a query never breaks
    assert data.schema.field("score_echo").type == pa.float64()
    assert sorted(data.column("answer").to_pylist()) == ["1", "2", "3"]
    rej = pq.read_table(out / "rejects").to_pylist()
    assert [(r["reject_stage"], r["reject_reason"]) for r in rej] == [
        ("verify", "verify:fail:AssertionError")
    ]
    assert {n for n, _ in REJECT_COLUMNS} <= set(rej[0])
    assert json.loads((out / "summary.json").read_text())["counts"]["accepted"] == 3
    assert (out / "README.md").read_text().startswith("---")
    con = duckdb.connect()
    n = con.execute(
        f"SELECT count(*) FROM read_parquet('{out}/data/*.parquet') WHERE score_judge > 0.55"
    ).fetchall()
    assert n == [(2,)]


def test_splits_and_shards_are_separate_files(tmp_path):
    w = _writer(tmp_path, rows=0, shard_rows=2)
    w.add([_record(i) for i in range(5)] + [_record(7, "test")], [])
    out = w.finalize({})
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]


def test_a_run_without_rows_still_has_its_schema(tmp_path):
    w = _writer(tmp_path, rows=0)
    out = w.finalize({})
    t = pq.read_table(out / "data")
    assert t.num_rows == 0 and "problem" in t.schema.names


def test_only_completed_runs_are_listed(tmp_path):
    w = _writer(tmp_path)
    done = w.finalize({})
    staged = tmp_path / "out" / STAGING / "math--other"
    staged.mkdir(parents=True)
    broken = tmp_path / "out" / "math" / "20261206T000001-badbad"
    (broken / "data").mkdir(parents=True)  # no _SUCCESS: a run that died while publishing
    assert completed_runs(tmp_path / "out") == [done]  # the output root: recipe/run/_SUCCESS
