"""Runs that overlap safely: a lock per run, resumable markers, and item ranges reserved atomically.

Under ``<root>/.synthflow-staging/``:

- ``<recipe>--<fp>--<run_id>.json``: a resumable run (written when it starts, removed when it
  publishes). A new run adopts one only when it can take that run's lock.
- ``<recipe>--<run_id>.lock``: held with ``flock`` by the process running the run (pid and host
  written inside for people). The kernel drops the lock when the process ends, so a lock of a killed
  run is stale by construction; two live runs never share a run id, a staging folder or a resume.
- ``<recipe>--<fp>.items.jsonl``: item reservations, one line per run ``{run_id, start, count}``,
  appended under a ``flock``: concurrent runs of one recipe draw disjoint items.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from synthflow.atomic import atomic_path
from synthflow.errors import UserError
from synthflow.store import STAGING


def staging(root: Path) -> Path:
    d = Path(root) / STAGING
    d.mkdir(parents=True, exist_ok=True)
    return d


def new_run_id(fingerprint: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{fingerprint[:6]}-{secrets.token_hex(2)}"


_HELD: set[int] = set()  # fds of the locks this process holds


def _close_in_child() -> None:
    # a forked child (a worker started with fork, not exec) must not keep this process's run locks:
    # a killed run's lock would stay held while such a child lives; the parent keeps its own fd
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive ``flock`` on the run's lock file, held until ``release`` (or process exit)."""

    def __init__(self, path: Path, f: IO[str]):
        self.path = path
        self._f: IO[str] | None = f
        _HELD.add(f.fileno())

    @classmethod
    def try_take(cls, path: Path) -> RunLock | None:
        """The lock, or None when another process holds it."""
        f = open(path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        except OSError as e:  # e.g. a filesystem without flock (NFS mounted nolock)
            f.close()
            raise UserError(f"{path}: cannot lock ({e.strerror}); use a local output folder") from None
        # the holder unlinks the file when it releases: a lock on an unlinked file is no lock
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            f.close()
            return None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        f.flush()
        return cls(path, f)

    def release(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            _HELD.discard(self._f.fileno())
            self._f.close()
            self._f = None


def lock_path(root: Path, recipe: str, run_id: str) -> Path:
    return staging(root) / f"{recipe}--{run_id}.lock"


def marker_path(root: Path, recipe: str, fp: str, run_id: str) -> Path:
    return staging(root) / f"{recipe}--{fp}--{run_id}.json"


def claim_run(
    root: Path, recipe: str, fp: str, recipe_path: str, run_id: str | None = None
) -> tuple[str, bool, RunLock]:
    """(run id, resumed, lock): an unfinished run of this recipe whose lock is free, else a new one."""
    root = Path(root)
    if run_id is None:
        for m in sorted(staging(root).glob(f"{recipe}--{fp}--*.json")):
            try:
                rid = str(json.loads(m.read_text())["run_id"])
            except (OSError, ValueError, KeyError):
                continue  # not a marker of ours (or gone meanwhile)
            if m.name != marker_path(root, recipe, fp, rid).name:
                continue  # another recipe whose name starts with this one's plus "--"
            lock = RunLock.try_take(lock_path(root, recipe, rid))
            if lock is None:
                continue  # a live run: never share it
            if m.is_file():  # its process is gone and it did not publish: resume it
                return rid, True, lock
            lock.release()  # it finished meanwhile
    for _ in range(100):
        rid = run_id or new_run_id(fp)
        lock = RunLock.try_take(lock_path(root, recipe, rid))
        if lock is not None:
            break
        if run_id is not None:
            raise UserError(f"run {run_id} is being run by another process")
    else:
        raise UserError(f"{staging(root)}: could not take a run lock after 100 tries")
    with atomic_path(marker_path(root, recipe, fp, rid)) as tmp:
        tmp.write_text(json.dumps({"run_id": rid, "recipe": recipe_path}))
    return rid, False, lock


@contextlib.contextmanager
def _locked(path: Path, waiting: str | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` while the block runs; ``waiting``: the line to print when
    another process holds it. Its fd is closed in a forked child (see _close_in_child)."""
    with open(path, "a+") as f:
        _HELD.add(f.fileno())
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
            yield
        finally:
            _HELD.discard(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)


def publishing(root: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a run checks its rows against the runs that published since it started, publishes
    and adds its rows to the cross-run indexes: runs under one output root publish one at a time."""
    waiting = f"synthflow: waiting for another run to finish publishing under {root}"
    return _locked(staging(root) / "publish.lock", waiting)


def _items_log(root: Path, recipe: str, fp: str) -> tuple[Path, Path]:
    d = staging(root)
    return d / f"{recipe}--{fp}.items.jsonl", d / f"{recipe}--{fp}.items.lock"


def _append(log: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry) + "\n").encode()
    with open(log, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        if end:  # a line cut by a crash must not swallow this entry
            f.seek(end - 1)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _reservations(log: Path) -> dict[str, dict[str, Any]]:
    """run id -> its latest entry (a finished run trims its range to what it planned)."""
    out: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            r: dict[str, Any] = json.loads(line)
            out[str(r["run_id"])] = {"start": int(r["start"]), "count": int(r["count"])}
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    return out


def reserve_items(root: Path, recipe: str, fp: str, run_id: str, count: int, floor: int = 0) -> int:
    """The first item index of this run's range of ``count`` items: its earlier reservation when it
    resumes, else just past every reservation (and ``floor``: items of runs from before this log)."""
    log, lock = _items_log(root, recipe, fp)
    with _locked(lock):
        res = _reservations(log)
        if run_id in res:
            return res[run_id]["start"]
        end = max([floor, *(r["start"] + r["count"] for r in res.values())])
        _append(log, {"run_id": run_id, "start": end, "count": count})
        return end


def finish_run(root: Path, recipe: str, fp: str, run_id: str, planned: int) -> None:
    """After publishing: trim the reservation to the items the run planned (the next run starts
    right after them) and remove the resume marker. The lock goes with ``RunLock.release``."""
    log, lock = _items_log(root, recipe, fp)
    with _locked(lock):
        start = _reservations(log).get(run_id, {}).get("start")
        if start is not None:
            _append(log, {"run_id": run_id, "start": start, "count": planned})
    marker_path(root, recipe, fp, run_id).unlink(missing_ok=True)


def abandon_run(root: Path, recipe: str, fp: str, run_id: str, lock: RunLock, keep_marker: bool) -> None:
    """A run that failed before any work (bad input): drop its marker unless it was a resume."""
    if not keep_marker:
        marker_path(root, recipe, fp, run_id).unlink(missing_ok=True)
    lock.release()
