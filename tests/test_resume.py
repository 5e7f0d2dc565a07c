"""kill -9 mid-generation, rerun: nothing already generated is generated again, and the accepted
rows equal those of an uninterrupted run (none lost, none duplicated)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from synthflow.model import default_model_dir

from .conftest import DATA, math_recipe, run_cli, synthflow_exe


def _rows(out: Path) -> list[tuple]:
    files = sorted(out.glob("math/*/data/*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    # ids include the run id (unique per run, kept on resume), so compare content and position
    return sorted(
        (r["item"], r["seed_id"], r["problem"], r["answer"], json.dumps(r["messages"])) for r in rows
    )


def _cached(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def test_kill_and_resume(tmp_path, prefect_harness):
    engine = {"name": "fake", "options": {"script": str(DATA / "fake_math.json"), "delay_s": 0.4}}
    # the moved cache home has no embedded model: its tokenizer is named for the SFT check
    tok = str(default_model_dir())
    recipe = math_recipe(
        tmp_path, n=5, batch_size=8, max_items=160, engine=engine, output__target_tokenizer=tok
    )
    home = {"SYNTHFLOW_CACHE": str(tmp_path / "home")}

    # the reference: the same rows without the engine's delay (it only keeps the killed run busy)
    ref_recipe = math_recipe(tmp_path, name="ref.yaml", n=5, batch_size=8, max_items=160,
                             engine={**engine, "options": {**engine["options"], "delay_s": 0}},
                             output__target_tokenizer=tok)  # fmt: skip
    ref = run_cli(
        "run",
        str(ref_recipe),
        "--out",
        str(tmp_path / "ref"),
        env={**home, "SYNTHFLOW_RESPONSE_CACHE": str(tmp_path / "ref.sqlite3")},
        cwd=tmp_path,
        shared_prefect=True,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    want = _rows(tmp_path / "ref")
    assert len(want) == 5

    db = tmp_path / "c.sqlite3"
    env = {**os.environ, **home, "SYNTHFLOW_RESPONSE_CACHE": str(db)}
    proc = subprocess.Popen(
        [synthflow_exe(), "run", str(recipe), "--out", str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while _cached(db) < 24 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    children = _children(proc.pid)  # its ephemeral Prefect server
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the run itself, as a user would
    proc.wait()
    had = _cached(db)
    assert had >= 24
    out = tmp_path / "out"
    assert not list(out.glob("math/*/data/*.parquet")), "a killed run must not publish data"

    # the killed run had a temporary Prefect server of its own; the rerun (on the session's server)
    # still stops it
    again = run_cli(
        "run", str(recipe), "--out", str(out), env={**home, "SYNTHFLOW_RESPONSE_CACHE": str(db)}, cwd=tmp_path,
        shared_prefect=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(resumed)" in again.stdout
    summary = json.loads(next(out.glob("math/*/summary.json")).read_text())
    assert summary["cache"]["hits"] >= had  # everything generated before the kill came from the cache
    # every planned item was asked once; a batch made ahead and discarded (the run reached n) too
    assert summary["cache"]["hits"] + summary["cache"]["misses"] == (
        summary["items_planned"] + summary["items_discarded"]
    )
    assert _rows(out) == want
    assert len(list(out.glob("math/*/_SUCCESS"))) == 1
    # the orphaned Prefect server of the killed run was stopped by the rerun
    time.sleep(1)
    alive = [
        p
        for p in children
        if Path(f"/proc/{p}").exists() and "prefect" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
    ]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    assert not alive, "orphaned prefect server left running"
