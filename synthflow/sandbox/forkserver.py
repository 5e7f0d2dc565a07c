"""Fork-server sandbox: warm parents (one per worker) that fork one child per program.

Isolation modes, best first (``SandboxExecutor.mode`` and every verdict report which one ran):

- ``bwrap``: each warm parent runs under Debian's bubblewrap: read-only root, private /tmp, no
  network (empty net namespace), its own pid namespace (nothing outlives it), ``--die-with-parent``.
  As root, each child also drops to its own unprivileged uid (so it cannot signal its parent and
  ``RLIMIT_NPROC`` applies) and leftovers of that uid are swept after every program.
- ``unshare``: ``unshare -rn`` (user + network namespace): no network; files are protected by the
  audit guard below and ordinary permissions only.
- ``fallback``: no namespaces available: the audit guard still refuses sockets, process creation,
  signals to others, ctypes and writes outside the job folder.

In every mode each child gets a new session and process group, its own empty temp dir as cwd, a
scrubbed environment, stdin closed, and rlimits (address space, CPU seconds, file size, open files,
processes); a wall-clock timeout kills the whole process group; captured output is capped.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

from synthflow.errors import UserError
from synthflow.sandbox.verdict import Job, Verdict

MODES = ("bwrap", "unshare", "fallback")
SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
UID_BASE = 61000


def _bwrap_prefix() -> list[str]:
    cmd = [
        "bwrap",
        "--ro-bind", "/", "/",
        "--tmpfs", "/tmp",
        "--dev", "/dev",
        "--proc", "/proc",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
    ]  # fmt: skip
    cmd += _expose_private_paths()
    if os.geteuid() == 0:
        # the warm parent keeps what it needs to drop each child to its own uid and clean up after it
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user"]
    return cmd


def _needed_paths() -> set[Path]:
    """What a sandboxed Python needs to see: the interpreter, the virtualenv and this project."""
    import synthflow

    return {
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        Path(synthflow.__file__).resolve().parents[1],
    }


def _expose_private_paths() -> list[str]:
    """Children run as an unprivileged uid. When Python or the project lives under a private folder
    (e.g. /root/.pyenv), hide that folder behind an empty tmpfs and bind back only what they need:
    the interpreter, the virtualenv and the project. The rest of it (keys, caches) stays invisible."""
    needed = _needed_paths()
    args: list[str] = []
    # the private /tmp hides anything under /tmp (a checkout or venv there): bind those back
    for path in sorted(needed):
        if Path("/tmp") in path.parents:
            args += ["--ro-bind", str(path), str(path)]
            needed = needed - {path}
    hidden: set[Path] = set()
    for path in sorted(needed):
        for anc in reversed(path.parents):  # from / downwards
            if anc == Path("/"):
                continue
            try:
                if not anc.stat().st_mode & 0o001:  # others may not enter
                    if anc not in hidden:
                        args += ["--perms", "0755", "--tmpfs", str(anc)]
                        hidden.add(anc)
                    break
            except OSError:
                break
    made: set[Path] = set()
    for path in sorted(needed):
        top = next((h for h in hidden if h in path.parents), None)
        if top is None:
            continue
        for d in reversed(path.parents):  # the folders between the tmpfs and the bind must be enterable
            if top in d.parents and d not in made:
                args += ["--perms", "0755", "--dir", str(d)]
                made.add(d)
        args += ["--ro-bind", str(path), str(path)]
    return args


def _works(prefix: list[str]) -> bool:
    try:
        p = subprocess.run(
            [*prefix, sys.executable, "-I", "-S", "-c", "pass"],
            capture_output=True,
            timeout=30,
            env=SERVER_ENV,
        )
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cache
def detect_mode(preferred: str = "auto") -> tuple[str, tuple[str, ...]]:
    """The strongest isolation that works on this machine (or the one asked for)."""
    candidates = {
        "bwrap": _bwrap_prefix() if shutil.which("bwrap") else None,
        "unshare": ["unshare", "-rn", "--"] if shutil.which("unshare") else None,
        "fallback": [],
    }
    order = MODES if preferred == "auto" else (preferred,)
    for mode in order:
        if mode not in candidates:
            raise UserError(f"sandbox mode {mode!r}: choose one of auto, {', '.join(MODES)}")
        prefix = candidates[mode]
        if prefix is None:
            continue
        if mode == "fallback" or _works(prefix):
            return mode, tuple(prefix)
        if preferred == "auto":  # installed but refused (e.g. no user namespaces): say so once
            print(
                f"synthflow: sandbox: {mode} is installed but fails to start here; trying the next mode",
                file=sys.stderr,
            )
    raise UserError(f"sandbox mode {preferred!r} is not available on this machine")


class _Server:
    """One warm parent and its pipes; restarted if a program manages to kill it."""

    def __init__(self, index: int, mode: str, prefix: tuple[str, ...]):
        self.index = index
        self.mode = mode
        self.prefix = prefix
        self.uid = UID_BASE + index if os.geteuid() == 0 and mode == "bwrap" else None
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        cfg = json.dumps({"uid": self.uid, "mode": self.mode})
        env = dict(SERVER_ENV)  # the server starts with no secrets to leak (and -I ignores PYTHON*)
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-I", "-m", "synthflow.sandbox.server", cfg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",
        )
        hello = self._read()
        if not hello or not hello.get("ready"):
            raise UserError(f"sandbox ({self.mode}) failed to start its fork server")

    def _read(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            return None
        n = struct.unpack(">I", head)[0]
        body = self.proc.stdout.read(n)
        return json.loads(body) if len(body) == n else None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(job).encode()
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            v = self._read()
        except (BrokenPipeError, OSError):
            v = None
        if v is None:  # the warm parent died (a program got at it): verdict killed, start a new one
            self.close()
            self.restarts += 1
            self.start()
            return {
                "status": "killed",
                "exc_type": "",
                "message": "the program killed its sandbox parent",
                "duration_s": 0.0,
            }
        return v

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class SandboxExecutor:
    """Jobs in, verdicts out, through ``workers`` warm fork servers (default: one per core)."""

    def __init__(self, workers: int | None = None, mode: str = "auto", mem_mb: int = 1024, nproc: int = 64):
        self.mode, prefix = detect_mode(mode)
        self.workers = workers or len(os.sched_getaffinity(0)) or 1
        self.mem_mb = mem_mb
        self.nproc = nproc
        self._servers = [_Server(i, self.mode, prefix) for i in range(self.workers)]
        self._lock = threading.Lock()

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._servers)

    def _job(self, j: Job) -> dict[str, Any]:
        d = j.as_dict()
        d["mem_mb"] = self.mem_mb
        d["nproc"] = self.nproc
        return d

    def run(self, jobs: list[Job]) -> list[Verdict]:
        if not jobs:
            return []
        results: list[Verdict | None] = [None] * len(jobs)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(jobs)):
            todo.put(i)

        def worker(server: _Server) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                v = server.run(self._job(jobs[i]))
                results[i] = Verdict(
                    status=v.get("status", "error"),
                    exc_type=v.get("exc_type", ""),
                    message=v.get("message", ""),
                    duration_s=float(v.get("duration_s", 0.0)),
                    stdout=v.get("stdout", ""),
                    stderr=v.get("stderr", ""),
                    value=v.get("value"),
                    value_repr=v.get("value_repr", ""),
                    mode=self.mode,
                )

        with self._lock:  # one batch at a time per executor
            threads = [
                threading.Thread(target=worker, args=(s,), daemon=True) for s in self._servers[: len(jobs)]
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for s in self._servers:
            s.close()

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
