"""The sandbox on a Dask cluster: the same ``run(jobs) -> verdicts`` as :class:`SandboxExecutor`,
with the jobs split into chunks and each chunk run by a worker in its own sandbox (one fork
server per chunk, started and stopped on that worker). Verdicts come back in job order."""

from __future__ import annotations

from synthflow.sandbox.verdict import Job, Verdict


def run_chunk(
    jobs: list[Job], mode: str, mem_mb: int, allow_weak: bool
) -> tuple[list[Verdict], str, bool, bool]:
    """On a Dask worker: one sandbox for this chunk, closed before returning (nothing is left running)."""
    from synthflow.sandbox.forkserver import SandboxExecutor

    with SandboxExecutor(workers=1, mode=mode, mem_mb=mem_mb, allow_weak=allow_weak) as ex:
        return ex.run(jobs), ex.mode, ex.weak, ex.seccomp


class DaskSandbox:
    """``executor`` for the verifiers and ``synthflow verify`` with ``--dask ADDRESS|local:N``."""

    def __init__(self, address: str, mode: str = "auto", mem_mb: int = 1024, allow_weak: bool = False):
        from synthflow.daskrun import client_for

        self.address = address
        self._cm = client_for(address)
        self.client = self._cm.__enter__()
        self.sandbox_mode, self.mem_mb, self.allow_weak = mode, mem_mb, allow_weak
        self.mode = ""  # as the workers report it, after the first chunk
        self.weak = False
        self._seccomp: list[bool] = []
        self.counts = {"trusted": 0, "untrusted": 0}
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    @property
    def seccomp(self) -> bool:
        return bool(self._seccomp) and all(self._seccomp)

    def run(self, jobs: list[Job]) -> list[Verdict]:
        from synthflow.daskrun import split

        if not jobs:
            return []
        chunks = split(jobs, 2 * self.workers)
        futures = self.client.map(
            run_chunk,
            chunks,
            mode=self.sandbox_mode,
            mem_mb=self.mem_mb,
            allow_weak=self.allow_weak,
            pure=False,
        )
        out: list[Verdict] = []
        for verdicts, mode, weak, seccomp in self.client.gather(futures):
            out.extend(verdicts)
            self.mode = mode if not self.mode or self.mode == mode else f"{self.mode}+{mode}"
            self.weak = self.weak or weak
            self._seccomp.append(seccomp)
        for v in out:
            self.counts["trusted" if v.trusted else "untrusted"] += 1
        return out

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None

    def __enter__(self) -> DaskSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
