"""Two shards on the embedded model (vLLM on the CPU), through the CLI: each shard process starts
its own engine on its own share of the cores, and one merged dataset is published."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_two_shards_on_the_embedded_model(tmp_path, prefect_harness):
    out = tmp_path / "out"
    p = run_cli(
        "run", str(ROOT / "recipes" / "math.yaml"), "--n", "2", "--batch-size", "16", "--max-items", "32",
        "--shards", "2", "--out", str(out), env={"SYNTHFLOW_PROGRESS": "0"}, cwd=tmp_path, shared_prefect=True, timeout=1800,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list(out.glob("math/*/"))
    assert len(runs) == 1
    s = json.loads((runs[0] / "summary.json").read_text())
    assert s["engine"] == "vllm" and s["model"] == "SmolLM2-135M-Instruct"
    assert [sh["shard"] for sh in s["shards"]] == [0, 1]
    made = [i for sh in s["shards"] for i in sh["batches"]]
    assert len(made) == len(set(made)) and made  # disjoint batches
    assert all(sh["cache"]["misses"] > 0 for sh in s["shards"] if sh["batches"])
    assert s["tokens"]["completion"] == sum(sh["tokens"]["completion"] for sh in s["shards"])
    data = pq.read_table(next((runs[0] / "data").glob("*.parquet")))
    rejects = pq.read_table(next((runs[0] / "rejects").glob("*.parquet")))
    assert data.num_rows == s["counts"]["accepted"] <= 2
    assert data.num_rows + rejects.num_rows == s["counts"]["generated"]
    assert not list(out.glob(".synthflow-staging/*.shards"))
