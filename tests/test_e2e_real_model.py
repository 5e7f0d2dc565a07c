"""End to end on the real embedded model (vLLM on the CPU) as a user runs it: ``synthflow run``
through the CLI and Prefect (the session's Prefect server), which loads the model in its own
process, must finish, publish a readable dataset, put every dropped row in the rejects table; and
Ctrl-C must stop such a run. The flow calls the same batch loop as the plain runs, so the other
recipes run that loop on the session's one engine (``test_real_model.py``), with one model load."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest

from synthflow.store import CORE_COLUMNS

from .browser import assert_drawn, render
from .conftest import ROOT, run_cli
from .helpers import expected_figures

pytestmark = pytest.mark.slow


def test_math_through_the_cli_stopped_by_ctrl_c_and_sigterm_then_resumed(tmp_path, prefect_harness):
    """`synthflow run` on the embedded model is stopped mid-run by SIGINT (Ctrl-C), then, resumed,
    by SIGTERM: each stops within 10 s with one line, exit 130 / 143, nothing published, and no vLLM
    engine core or worker it started left running. The same command then resumes (what the stopped
    runs generated comes from the cache) and publishes the rows an uninterrupted run gives over the
    same model responses. (The temporary Prefect server a run starts is stopped too: tested with the
    scripted engine; these runs use the session's server.)"""
    import signal

    import yaml
    from prefect.settings import PREFECT_API_URL

    from .helpers import content, reasons
    from .test_signals import stop_mid_generation

    data = yaml.safe_load((ROOT / "recipes" / "math.yaml").read_text())
    data.update(n=2, batch_size=16, max_items=32)
    recipe = tmp_path / "math.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    cache = tmp_path / "cache.sqlite3"
    out = tmp_path / "out"  # the recipe's output root, relative to the run's folder
    api = PREFECT_API_URL.value()
    stop_mid_generation(tmp_path, recipe, signal.SIGINT, cache, wait_s=300, api=api)
    stop_mid_generation(tmp_path, recipe, signal.SIGTERM, cache, wait_s=300, api=api)
    env = {"SYNTHFLOW_PROGRESS": "0", "SYNTHFLOW_RESPONSE_CACHE": str(cache)}
    p = run_cli("run", str(recipe), env=env, cwd=tmp_path, shared_prefect=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "funnel: seeds 40 -> generated" in p.stdout and "(resumed)" in p.stdout
    run_dir = next(out.glob("math/*/"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cache"]["hits"] > 0  # what the stopped run generated was not generated again
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
    assert "machine-generated" in (run_dir / "README.md").read_text()
    # the run's report draws every plot in a real browser (what `make dataset RECIPE=math` writes)
    assert_drawn(render(run_dir / "report.html"), expected_figures(run_dir))

    # an uninterrupted run of the same command over the same model responses (the cache; another
    # output root, so it starts at item 0 too) publishes the same rows and rejects
    ref = run_cli("run", str(recipe), "--out", str(tmp_path / "ref"), env=env, cwd=tmp_path, shared_prefect=True,
                  timeout=1200)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_dir = next((tmp_path / "ref").glob("math/*/"))
    assert "(resumed)" not in ref.stdout
    assert content(ref_dir) == content(run_dir) and reasons(ref_dir) == reasons(run_dir)
