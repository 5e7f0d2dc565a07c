"""One fresh ``python -I -S`` process per program: simple, slow (about 10 ms before user code runs).

Used by the walking skeleton and kept as the speed baseline for the fork-server sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthflow.sandbox.verdict import Job, Verdict

HARNESS_SRC = (Path(__file__).with_name("harness.py")).read_text() + "\nmain_from_argv()\n"
OUTPUT_CAP = 64 * 1024
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}


def _limits(mem_bytes: int, cpu_s: int) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


class SubprocessExecutor:
    mode = "subprocess"

    def __init__(self, workers: int | None = None, mem_mb: int = 1024):
        self.workers = workers or os.cpu_count() or 1
        self.mem_bytes = mem_mb << 20

    def _one(self, job: Job) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="sf-run-") as tmp:
            jf = Path(tmp) / "job.json"
            jf.write_text(json.dumps(job.as_dict()))
            r, w = os.pipe()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HARNESS_SRC, str(jf), str(w)],
                cwd=tmp,
                env=CLEAN_ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(w,),
                preexec_fn=lambda: _limits(self.mem_bytes, int(job.timeout_s) + 1),
            )
            os.close(w)
            timed_out = False
            try:
                out, err = proc.communicate(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            dur = time.perf_counter() - t0
            with os.fdopen(r, "rb") as rf:
                line = rf.read(1 << 20)
        stdout = out[:OUTPUT_CAP].decode("utf-8", "replace")
        stderr = err[:OUTPUT_CAP].decode("utf-8", "replace")
        if timed_out:
            return Verdict(
                "timeout",
                message=f"wall clock {job.timeout_s}s",
                duration_s=dur,
                stdout=stdout,
                stderr=stderr,
                mode=self.mode,
            )
        try:
            res = json.loads(line.decode().splitlines()[0])
        except (ValueError, IndexError):
            rc = proc.returncode
            status = "killed" if rc < 0 else "error"
            if rc == -signal.SIGXCPU:
                status = "timeout"
            msg = (
                f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc} before reporting"
            )
            return Verdict(status, message=msg, duration_s=dur, stdout=stdout, stderr=stderr, mode=self.mode)
        return Verdict(
            res["status"],
            exc_type=res["exc_type"],
            message=res["message"],
            duration_s=dur,
            stdout=stdout,
            stderr=stderr,
            value=res["value"],
            value_repr=res["value_repr"],
            mode=self.mode,
        )

    def run(self, jobs: list[Job]) -> list[Verdict]:
        if not jobs:
            return []
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(self._one, jobs))

    def close(self) -> None:
        pass
