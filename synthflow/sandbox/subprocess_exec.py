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
from typing import Any

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
    """The benchmark baseline: the same jobs and the same trusted comparison as the fork-server
    sandbox, but one fresh interpreter per program and no isolation beyond rlimits. Not an option
    for recipes (it is not a sandbox)."""

    mode = "subprocess"

    def __init__(self, workers: int | None = None, mem_mb: int = 1024):
        self.workers = workers or os.cpu_count() or 1
        self.mem_mb = mem_mb
        self.mem_bytes = mem_mb << 20

    def _one(self, job: Job) -> Verdict:
        from synthflow.sandbox.forkserver import _Prepared, _results, verdict_for
        from synthflow.sandbox.trusted import literal

        p = _Prepared(job, self.mem_mb, 64)
        if p.kind == "driver":
            raise ValueError("the baseline runs call-mode jobs only")
        self._answer(p, job.timeout_s)
        todo = [src for src in p.expected_sources() if not literal(src)[0]]
        computed: dict = {}
        if todo:  # like the sandbox: expected values from a separate clean process
            c = _Prepared(Job(code="", timeout_s=10.0), self.mem_mb, 64)
            c.server_job.update(calls=todo)
            self._answer(c, 10.0)
            if c.answer.get("status") == "done":
                computed = dict(zip(todo, _results(c.answer["frame"]), strict=False))
        return verdict_for(p, self.mode, computed)

    def _answer(self, p: Any, timeout_s: float) -> None:
        with tempfile.TemporaryDirectory(prefix="sf-run-") as tmp:
            jf = Path(tmp) / "job.json"
            jf.write_text(json.dumps(p.server_job))
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
                preexec_fn=lambda: _limits(self.mem_bytes, int(timeout_s) + 1),
            )
            os.close(w)
            timed_out = False
            try:
                out, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            dur = time.perf_counter() - t0
            with os.fdopen(r, "rb") as rf:
                raw = rf.read(1 << 24)
        answer: dict = {
            "duration_s": dur,
            "stdout": out[:OUTPUT_CAP].decode("utf-8", "replace"),
            "stderr": err[:OUTPUT_CAP].decode("utf-8", "replace"),
        }
        if timed_out:
            answer.update(status="timeout", message=f"wall clock {timeout_s}s")
        else:
            try:
                frame = json.loads(raw[4:])
                answer.update(status="done", frame=frame)
            except ValueError:
                answer.update(status="error", exc_type="EarlyExit", message="no result")
        p.answer = answer

    def run(self, jobs: list[Job]) -> list[Verdict]:
        if not jobs:
            return []
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(self._one, jobs))

    def close(self) -> None:
        pass
