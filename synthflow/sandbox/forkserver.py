"""Fork-server sandbox: warm parents (one per worker) that fork one child per program.

Isolation modes, best first (``SandboxExecutor.mode`` and every verdict report which one ran):

- ``bwrap``: each warm parent runs under Debian's bubblewrap: read-only root, a private size-capped
  /tmp, no network (empty net namespace), its own pid namespace (nothing outlives it),
  ``--die-with-parent``. As root, each child also drops to a uid of its own (the program's and, in
  driver mode, the tests' differ), so it cannot signal or inspect its parent or the other child,
  and leftovers of that uid are swept after every program.
- ``unshare``: ``unshare -rn`` (user + network namespace): weak; only with ``allow_weak``.
- ``fallback``: no namespaces: weak; only with ``allow_weak``.

Untrusted code runs by default only in ``bwrap``; anything weaker must be asked for
(``allow_weak``, ``--allow-weak-sandbox``) and is reported in every verdict, summary and card.

In every mode each child gets a new session and process group, its own empty folder as cwd, a
scrubbed environment, stdin closed, only its job's file descriptors, rlimits (address space, CPU
seconds, file size, open files, processes), a seccomp filter (no fork, exec, socket, ptrace or new
namespace) and an audit hook; a wall-clock timeout kills the whole process group; output is capped.

Verdicts are decided outside the program's process: tests are decomposed into calls the program
evaluates and comparisons the host makes on plain data (``synthflow.sandbox.trusted``); expected
values that are not literals come from a separate clean sandbox that never loads a program; tests
that cannot be decomposed run in driver mode, in a second child that holds the tests and calls the
program only through a pipe. Every job carries a random nonce its frames must repeat.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
from typing import Any

from synthflow.errors import UserError
from synthflow.sandbox.isolation import STRONG, WarmServer, detect_mode
from synthflow.sandbox.jobs import Prepared, called_name, frame_results, verdict_for
from synthflow.sandbox.verdict import Job, Verdict
from synthflow.sandbox.wire import NotPlain


class SandboxExecutor:
    """Jobs in, verdicts out, through ``workers`` warm fork servers (default: one per core)."""

    def __init__(
        self,
        workers: int | None = None,
        mode: str = "auto",
        mem_mb: int = 1024,
        nproc: int = 64,
        allow_weak: bool = False,
    ):
        self.mode, prefix = detect_mode(mode)
        if self.mode != STRONG and not allow_weak:
            raise UserError(
                f"the strong sandbox (bubblewrap with pid and network namespaces) is not available here; "
                f"only {self.mode!r} is. Install bubblewrap (apt-get install bubblewrap), or run untrusted "
                "code with weaker isolation on purpose: --allow-weak-sandbox / verify: {allow_weak: true}"
            )
        self.weak = self.mode != STRONG
        self._prefix = prefix
        self.workers = workers or len(os.sched_getaffinity(0)) or 1
        self.mem_mb = mem_mb
        self.nproc = nproc
        self._servers = [WarmServer(i, self.mode, prefix) for i in range(self.workers)]
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._clean: SandboxExecutor | None = None
        self.counts = {"trusted": 0, "untrusted": 0}

    @property
    def seccomp(self) -> bool:
        return all(s.seccomp for s in self._servers)

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._servers)

    def _run_server_jobs(self, server_jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = [{} for _ in server_jobs]
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(server_jobs)):
            todo.put(i)

        def worker(server: WarmServer) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                answers[i] = server.run(server_jobs[i])

        threads = [
            threading.Thread(target=worker, args=(s,), daemon=True) for s in self._servers[: len(server_jobs)]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

    def _clean_values(self, prepared: list[Prepared]) -> list[dict[str, tuple]]:
        """Expected values that are not literals, from a sandbox that never loads a program: one job
        per row, so a slow or failing expression spoils only its own row."""
        wanted = [list(dict.fromkeys(p.expected_sources())) for p in prepared]
        if not any(wanted):
            return [{} for _ in prepared]
        if self._clean is None:
            self._clean = SandboxExecutor(workers=1, mode=self.mode, mem_mb=self.mem_mb, allow_weak=True)
        jobs, owners = [], []
        for i, sources in enumerate(wanted):
            if sources:
                jobs.append({"code": "", "mode": "calls", "calls": sources, "call_fns": [called_name(x) for x in sources],
                             "per_call_timeout_s": 2.0,
                             "timeout_s": 2.0 * len(sources) + 2.0, "mem_mb": self.mem_mb, "nproc": self.nproc,
                             "policy": "none", "entry_points": [], "nonce": secrets.token_hex(16)})  # fmt: skip
                owners.append(i)
        out: list[dict[str, tuple]] = [{} for _ in prepared]
        for i, a in zip(owners, self._clean._run_server_jobs(jobs), strict=True):
            sources = wanted[i]
            try:
                if a.get("status") != "done":
                    raise NotPlain(str(a.get("message") or "could not compute"))
                res = frame_results(a.get("frame"), len(sources))
            except NotPlain as e:
                res = [("exc", "ExpectedValue", str(e)[:200])] * len(sources)
            out[i] = dict(zip(sources, res, strict=True))
        return out

    def run(self, jobs: list[Job]) -> list[Verdict]:
        if not jobs:
            return []
        prepared = [Prepared(j, self.mem_mb, self.nproc) for j in jobs]
        flat = [(p, k) for p in prepared for k in range(len(p.server_jobs))]
        with self._lock:  # one batch at a time per executor
            answers = self._run_server_jobs([p.server_jobs[k] for p, k in flat])
            for (p, k), a in zip(flat, answers, strict=True):
                p.answers[k] = a
            computed = self._clean_values(prepared)
        return [self._verdict(p, c) for p, c in zip(prepared, computed, strict=True)]

    def _verdict(self, p: Prepared, computed: dict[str, tuple]) -> Verdict:
        try:
            v = verdict_for(p, self.mode, computed)
        except Exception as e:  # noqa: BLE001 - one malformed answer spoils only its own row
            v = Verdict(status="error", exc_type="MalformedResult", message=f"{type(e).__name__}: {e}"[:300],
                        mode=self.mode, trusted=True)  # fmt: skip
        with self._count_lock:
            self.counts["trusted" if v.trusted else "untrusted"] += 1
        return v

    def close(self) -> None:
        for s in self._servers:
            s.close()
        if self._clean is not None:
            self._clean.close()

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
