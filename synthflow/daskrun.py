"""``--dask ADDRESS|local:N``: fan chunks of rows out to a Dask cluster, results in input order.

``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes for the call and stops
it afterwards; anything else is a scheduler address (``tcp://host:8786``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from synthflow.errors import UserError


def _restore_environ(before: dict[str, str]) -> None:
    """Undo what starting workers wrote into this process's environment: distributed's Nanny sets
    OMP_NUM_THREADS=1 (and MKL/OpenBLAS) in ``os.environ`` before it spawns a worker and never puts
    it back, so a vLLM engine started later in this process (or any child) ran on one thread."""
    for key in set(os.environ) | set(before):
        if os.environ.get(key) != before.get(key):
            if key in before:
                os.environ[key] = before[key]
            else:
                del os.environ[key]


@contextlib.contextmanager
def client_for(address: str) -> Iterator[Any]:
    before = dict(os.environ)
    try:
        with _client_for(address) as client:
            yield client
    finally:
        _restore_environ(before)


@contextlib.contextmanager
def _client_for(address: str) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--dask needs dask.distributed (pip install 'dask[distributed]')") from None
    local = address.removeprefix("local:") if address.startswith("local:") else None
    if local is not None and not (local.isdigit() and int(local) >= 1):
        raise UserError(f"--dask {address}: use local:N with N >= 1, or a scheduler address")
    cluster = None
    try:
        if local is not None:
            cluster = LocalCluster(
                n_workers=int(local),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
            client = Client(cluster)
        else:
            client = Client(address, timeout=15)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise UserError(f"--dask {address}: cannot reach the scheduler ({e})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def map_chunks(address: str, fn: Callable[..., Any], chunks: Sequence[Any], **kwargs: Any) -> list[Any]:
    """``fn(chunk, **kwargs)`` for every chunk on the cluster, in input order."""
    with client_for(address) as client:
        futures = client.map(fn, list(chunks), pure=False, **kwargs)
        return client.gather(futures)


def workers_of(address: str) -> int:
    """Worker count for chunking: N of local:N, else what the scheduler reports now."""
    if address.startswith("local:") and address[6:].isdigit():
        return max(1, int(address[6:]))
    with client_for(address) as client:
        return max(1, len(client.scheduler_info().get("workers", {})))


def split(rows: Sequence[Any], parts: int) -> list[list[Any]]:
    """Consecutive chunks, about ``parts`` of them (order kept, none empty)."""
    if not rows:
        return []
    size = max(1, -(-len(rows) // max(1, parts)))
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]
