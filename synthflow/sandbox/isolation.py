"""Where the sandbox's warm parents run: the isolation modes (bwrap, unshare, fallback), which one
works here, and :class:`WarmServer`, one warm fork server process and its pipes (restarted if a
program manages to kill it). See :mod:`synthflow.sandbox.forkserver` for what each mode gives."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import struct
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from synthflow.errors import UserError

MODES = ("bwrap", "unshare", "fallback")
STRONG = "bwrap"
TMP_BYTES = 512 << 20  # each warm parent's private /tmp (all its jobs' folders)
SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
UID_BASE = 61000


def _bwrap_prefix() -> list[str]:
    cmd = [
        "bwrap",
        "--ro-bind", "/", "/",
        "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
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
        cmd += ["--unshare-user", "--disable-userns"]
    return cmd


def _project_root() -> Path:
    """The folder this process imported synthflow from (a Prefect worker may run a copy of the
    project in a temporary folder, not the checkout the virtualenv's editable install points at)."""
    import synthflow

    return Path(synthflow.__file__).resolve().parents[1]


# the server imports synthflow from the same folder as this process (and the one that is bound in)
_SERVER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from synthflow.sandbox import server; server.main()"
)


def _needed_paths() -> set[Path]:
    """What a sandboxed Python needs to see: the interpreter, the virtualenv and this project."""
    return {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), _project_root()}


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


class WarmServer:
    """One warm parent and its pipes; restarted if a program manages to kill it."""

    def __init__(self, index: int, mode: str, prefix: tuple[str, ...]):
        self.index = index
        self.mode = mode
        self.prefix = prefix
        root = os.geteuid() == 0 and mode == "bwrap"
        self.uid = UID_BASE + 2 * index if root else None  # the program's children
        self.driver_uid = UID_BASE + 2 * index + 1 if root else None  # driver children (the tests)
        self.seccomp = False
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        # marshal: the server reads it before it imports json (its clean parents are forked first)
        cfg = marshal.dumps(
            {"uid": self.uid, "driver_uid": self.driver_uid, "mode": self.mode, "seccomp": True}
        ).hex()
        env = dict(SERVER_ENV)  # the server starts with no secrets to leak (and -I ignores PYTHON*)
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-I", "-S", "-c", _SERVER_BOOT, str(_project_root()), cfg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",
        )
        hello = self._read()
        if not hello or not hello.get("ready"):
            raise UserError(f"sandbox ({self.mode}) failed to start its fork server")
        self.seccomp = bool(hello.get("seccomp"))

    def _read(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            return None
        n = struct.unpack(">I", head)[0]
        body = self.proc.stdout.read(n)
        if len(body) != n:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(job).encode()
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            v = self._read()
        except (BrokenPipeError, OSError):
            v = None
        if not isinstance(v, dict) or v.get("nonce") != job["nonce"]:
            # the warm parent died or answered out of turn: verdict killed, start a new one
            self.close()
            self.restarts += 1
            self.start()
            return {
                "status": "killed",
                "exc_type": "",
                "message": "the sandbox parent died or answered out of turn",
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
