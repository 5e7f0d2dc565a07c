"""Overlapping runs of one recipe: a lock per run, resume only of a run whose process is gone,
item ranges reserved atomically across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from synthflow import runlock

CLAIM = """
import sys, time
from synthflow import runlock
rid, resumed, lock = runlock.claim_run(sys.argv[1], "math", "fp", "recipe.yaml")
print(rid, flush=True)
time.sleep(600)
"""


def _holder(root: Path) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", CLAIM, str(root)], stdout=subprocess.PIPE, text=True)
    rid = p.stdout.readline().strip()
    assert rid, "the holder did not claim a run"
    return p, rid


def test_two_claims_get_distinct_runs(tmp_path):
    a = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    b = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    try:
        assert a[0] != b[0] and not a[1] and not b[1]
        assert runlock.marker_path(tmp_path, "math", "fp", a[0]).is_file()
    finally:
        a[2].release()
        b[2].release()


def test_a_live_run_is_never_adopted(tmp_path):
    p, rid = _holder(tmp_path)
    try:
        lock_info = json.loads(runlock.lock_path(tmp_path, "math", rid).read_text())
        assert lock_info["pid"] == p.pid and lock_info["host"]
        mine, resumed, lock = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
        assert mine != rid and not resumed
        lock.release()
    finally:
        p.kill()
        p.wait()


def test_a_killed_run_is_resumed_once(tmp_path):
    p, rid = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    got, resumed, lock = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    assert (got, resumed) == (rid, True)
    # while it is resumed here, a third run does not take it as well
    other, resumed2, lock2 = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    assert other != rid and not resumed2
    lock.release()
    lock2.release()


def test_a_finished_run_is_not_resumed(tmp_path):
    rid, _, lock = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    runlock.reserve_items(tmp_path, "math", "fp", rid, 100)
    runlock.finish_run(tmp_path, "math", "fp", rid, planned=16)
    lock.release()
    got, resumed, lock = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
    assert got != rid and not resumed
    # the next run starts right after the items the finished run planned
    assert runlock.reserve_items(tmp_path, "math", "fp", got, 100) == 16
    lock.release()


def _reserve(args: tuple[str, str]) -> tuple[str, int]:
    root, rid = args
    time.sleep(0.01 * (int(rid[3:]) % 5))  # interleave the processes
    return rid, runlock.reserve_items(Path(root), "math", "fp", rid, 10)


def test_concurrent_reservations_are_disjoint(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        got = pool.map(_reserve, [(str(tmp_path), f"run{i}") for i in range(12)])
    starts = sorted(s for _, s in got)
    assert starts == list(range(0, 120, 10))
    # a resumed run gets its own range back
    rid, start = got[3]
    assert runlock.reserve_items(tmp_path, "math", "fp", rid, 10) == start


def test_reservations_start_past_earlier_runs(tmp_path):
    """``floor``: items of finished runs from before the log existed."""
    assert runlock.reserve_items(tmp_path, "math", "fp", "a", 10, floor=25) == 25
    assert runlock.reserve_items(tmp_path, "math", "fp", "b", 10, floor=25) == 35


FORK_AND_HOLD = """
import os, sys, time
from synthflow import runlock
rid, resumed, lock = runlock.claim_run(sys.argv[1], "math", "fp", "recipe.yaml")
if os.fork() == 0:  # a worker started with fork (vLLM may start its engine core so)
    open(os.path.join(sys.argv[1], "forked"), "w").close()  # its at-fork hook has run by now
    time.sleep(600)
    os._exit(0)
print(rid, flush=True)
time.sleep(600)
"""


def test_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", FORK_AND_HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # wait for both: the child closes the inherited lock fd in its at-fork hook, and a kill before
    # the child has been scheduled at all would find the lock still shared (seen once under load)
    rid = p.stdout.readline().strip()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "forked").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "forked").exists(), "the forked child never ran"
        os.kill(p.pid, signal.SIGKILL)  # the run dies; its forked child lives on
        p.wait()
        got, resumed, lock = runlock.claim_run(tmp_path, "math", "fp", "r.yaml")
        assert (got, resumed) == (rid, True)
        lock.release()
    finally:
        os.killpg(p.pid, signal.SIGKILL)


def test_recipe_names_with_double_dashes(tmp_path):
    """Markers of recipe ``a--b`` are not read as runs of recipe ``a`` (and ids parse whole)."""
    p = subprocess.Popen(
        [sys.executable, "-c", CLAIM.replace('"math", "fp"', '"my--recipe", "fp"'), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    rid = p.stdout.readline().strip()
    try:
        other, resumed, lock = runlock.claim_run(tmp_path, "my--recipe", "fp", "r.yaml")
        assert other != rid and not resumed  # the live run is not adopted
        runlock.abandon_run(tmp_path, "my--recipe", "fp", other, lock, keep_marker=False)
        # recipe "my" with fingerprint "recipe": its marker glob also matches my--recipe's markers
        mine, resumed, lock = runlock.claim_run(tmp_path, "my", "recipe", "r.yaml")
        assert not resumed and mine != rid  # a marker of my--recipe is not a run of "my"
        lock.release()
    finally:
        p.kill()
        p.wait()
    got, resumed, lock = runlock.claim_run(tmp_path, "my--recipe", "fp", "r.yaml")
    assert (got, resumed) == (rid, True)
    lock.release()


def test_a_torn_log_line_loses_no_reservation(tmp_path):
    runlock.reserve_items(tmp_path, "math", "fp", "a", 10)
    log = runlock.staging(tmp_path) / "math--fp.items.jsonl"
    with open(log, "a") as f:
        f.write('{"run_id": "b", "sta')  # a crash mid-write
    assert runlock.reserve_items(tmp_path, "math", "fp", "c", 10) == 10
    assert runlock.reserve_items(tmp_path, "math", "fp", "d", 10) == 20


PUBLISH = """
import sys
from pathlib import Path
from synthflow import runlock
with runlock.publishing(Path(sys.argv[1])):
    Path(sys.argv[2]).touch()
"""


def test_runs_under_one_root_publish_one_at_a_time(tmp_path):
    """While a run holds the root's publish lock, another run's publish waits (and says so in one
    line), then goes on once the lock is released. Its fd is registered for the at-fork hook."""
    done = tmp_path / "published"
    with runlock.publishing(tmp_path):
        p = subprocess.Popen([sys.executable, "-c", PUBLISH, str(tmp_path), str(done)], stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
        line = p.stderr.readline()
        assert line == f"synthflow: waiting for another run to finish publishing under {tmp_path}\n"
        time.sleep(0.5)
        assert not done.exists() and p.poll() is None
        held = set(runlock._HELD)
        assert held  # registered, so a forked child closes it (see the fork test above)
    assert p.wait(timeout=30) == 0 and done.exists()
    assert not held & runlock._HELD  # released with the lock
