"""Stopping a run: SIGINT (Ctrl-C) and SIGTERM stop ``synthflow run`` promptly with one line, leave
no process it started running, and the same command then resumes to the rows of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from .conftest import math_recipe, run_cli, synthflow_exe


def _cached(db) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.Error:
        return 0


def _problems(out) -> list[str]:
    return sorted(
        r["problem"] for f in out.glob("math/*/data/*.parquet") for r in pq.read_table(f).to_pylist()
    )


def stop_mid_generation(tmp_path, recipe, sig, cache, wait_s: float = 120, api: str | None = None) -> str:
    """Start ``synthflow run recipe``, send ``sig`` once its first engine call is cached, and check
    that it stops within 10 s with one last line, exit 128+sig, and no process it started left.
    ``api``: a Prefect server to use (else the run starts a temporary one of its own)."""
    env = {**os.environ, "SYNTHFLOW_RESPONSE_CACHE": str(cache)} | ({"PREFECT_API_URL": api} if api else {})
    proc = subprocess.Popen([synthflow_exe(), "run", str(recipe)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + wait_s
        # generating: an engine call's responses are in the cache (one more than before)
        before = _cached(cache)
        while _cached(cache) <= before and time.monotonic() < deadline:
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()
        started = me.children(recursive=True)
        assert started, "the run started its child processes"
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10, took
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1].startswith("synthflow: "), err
    assert "run stopped" in err.strip().splitlines()[-1] and "Traceback" not in err
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.name()) for p in left]
    assert not list((tmp_path / "out").glob("math/*/data/*.parquet")), "nothing published"
    return err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_and_everything_it_started(tmp_path, sig, prefect_harness):
    # one engine call per 4 items, each taking 1 s: the run is mid-generation for a while
    recipe = math_recipe(tmp_path, n=6, batch_size=4, max_items=48, engine__options__delay_s=1.0)
    cache = tmp_path / "cache.sqlite3"
    stop_mid_generation(tmp_path, recipe, sig, cache)
    if sig != signal.SIGTERM:
        return
    # the same command resumes and publishes (that a resumed run publishes the rows of an
    # uninterrupted one is tested after kill -9 in test_resume.py)
    # (the rerun uses the session's Prefect server; the stopped run had a temporary one of its own)
    again = run_cli("run", str(recipe), cwd=tmp_path, env={"SYNTHFLOW_RESPONSE_CACHE": str(cache)},
                    shared_prefect=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "(resumed)" in again.stdout and _problems(tmp_path / "out")


def test_serve_says_what_it_serves_and_ctrl_c_stops_it(tmp_path, prefect_harness):
    """`synthflow serve math` names the deployment it serves; Ctrl-C stops it (and anything it
    started) within 10 s with one line and exit 130. An unknown name is one line before anything."""
    from prefect.settings import PREFECT_API_URL

    bad = run_cli("serve", "maht", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "synthflow: error: prefect.yaml: no deployment for 'maht' (serve takes a deployment or recipe "
        "name, or a recipe path listed there); did you mean 'math'?"
    ]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([synthflow_exe(), "serve", "math"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert first.startswith("serving 1 deployment(s) from prefect.yaml: math-nightly"), first
        started = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10 and proc.returncode == 130, (took, err)
    assert err.strip().splitlines()[-1] == "synthflow: interrupted: serve stopped" and "Traceback" not in err
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_failure_after_the_start_is_one_line_naming_the_log(tmp_path):
    """An endpoint that lists its models and answers the test chat call, then fails every call of
    the run: the terminal gets one line (exit 2) naming the log file, which holds Prefect's
    tracebacks; nothing is published."""
    from .test_openai_engine import Server

    # the test chat call before the start (1 token) is answered; every call of the run is refused
    httpd = Server(
        reply=lambda body: None if body["max_tokens"] == 1 else (400, {"error": "context length exceeded"})
    )
    try:
        url = httpd.url
        r = math_recipe(tmp_path, n=2, batch_size=4, max_items=8)
        p = run_cli("run", str(r), "--engine", "openai", "--base-url", url, "--model", "m", cwd=tmp_path,
                    env={"SYNTHFLOW_RETRY_DELAY_S": "0"})  # fmt: skip
    finally:
        httpd.close()
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "accepted:" not in ln]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    assert lines[0].startswith("synthflow: error: engine openai at ") and "HTTP 400" in lines[0]
    log = lines[0].rsplit("(log: ", 1)[1].rstrip(")")
    assert "Traceback" in Path(log).read_text()  # the details are in the log
    assert not list((tmp_path / "out").glob("math/*/data/*.parquet"))


def test_cancelling_the_flow_run_in_prefect_stops_a_cli_run(tmp_path, prefect_harness):
    """Cancel in the Prefect UI (here through the API, as `prefect flow-run cancel` does) a run
    started with `synthflow run`: it stops like Ctrl-C (one line, exit 130, no process left, nothing
    published) and the flow run ends Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    recipe = math_recipe(tmp_path, n=6, batch_size=4, max_items=48, engine__options__delay_s=1.0)
    cache = tmp_path / "cache.sqlite3"
    env = {**os.environ, "SYNTHFLOW_RESPONSE_CACHE": str(cache), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([synthflow_exe(), "run", str(recipe)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        before = _cached(cache)
        deadline = time.monotonic() + 120
        while _cached(cache) <= before and time.monotonic() < deadline:  # generating
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()
        started = psutil.Process(proc.pid).children(recursive=True)
        with get_client(sync_client=True) as client:
            (fr,) = [
                r for r in client.read_flow_runs() if r.name.startswith("math-") and r.state.is_running()
            ]
            client.set_flow_run_state(fr.id, Cancelling(), force=True)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - t0
            state = client.read_flow_run(fr.id).state
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 10 and proc.returncode == 130, (took, proc.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("synthflow: cancelled in Prefect: run stopped") and "Traceback" not in err
    assert state.name == "Cancelled"
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not list((tmp_path / "out").glob("math/*/data/*.parquet"))
