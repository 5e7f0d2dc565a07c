"""Sharded runs: N processes (or N Prefect workers on N hosts) generate one run's batches at once.

The run's parent process claims the run and its item range as usual (:meth:`Run.open`). Each shard
rebuilds the run's stages from a JSON job (the validated recipe, run id, fingerprint, item range)
and takes batch indices from a Redis queue shared by all shards (``INCR``), so no two shards make
the same batch. Batch ``i`` holds the items the one-process run would plan as its ``i``-th batch.
A shard runs the batch loop (:func:`synthflow.pipeline.process_batch`) on it and stages the
result as one file on the shared output storage. Shards stop once the staged batches ``0..k`` (no gap) give
``n`` rows when admitted in order (:class:`Admission`), or the budget is used up.

The merge, in the parent, reads the staged batches in index order and replays them into the run's
ledger (:func:`synthflow.pipeline.replay`), admitting their rows into the dedup indexes in that
order, exactly as the one-process run does, so
the published rows are the one-process run's rows. Cross-shard duplicates are dropped there, in
row order, not in whichever order shards finished. A batch that is missing (its shard was killed
and not retried) is made by the parent. Batches past the point where the run reached ``n`` are
discarded and their items un-planned.

A shard killed mid-batch is restarted (by the flow's task retry); it first redoes the batch it had
claimed, which its host's response cache mostly answers. Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthflow import pipeline
from synthflow.atomic import atomic_path
from synthflow.engines.pool import usage_fields, usage_totals
from synthflow.errors import UserError
from synthflow.run import Run
from synthflow.spec import RunSpec
from synthflow.stages import Stages, recipe_filters
from synthflow.store import STAGING


@dataclass
class Batch:
    """One batch's result (its passes), as a shard staged it."""

    index: int
    items: int
    result: pipeline.BatchResult
    shard: int
    key: str = ""  # what the batch was made from (see batch_key): a stale file is not reused


def batch_key(spec: RunSpec, items: list[Any]) -> str:
    """The run's fingerprint and item range, and each item's seed id, index and seed content: a
    resumed run whose seed files changed (paths are in the fingerprint, contents are not) makes
    its batches again instead of reusing the old ones."""
    import hashlib

    payload = [spec.fingerprint, spec.item_start, spec.recipe.batch_size]
    payload += [[it.seed.seed_id, it.index, it.seed.data] for it in items]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_dir(spec: RunSpec) -> Path:
    return Path(spec.recipe.output.root) / STAGING / f"{spec.recipe.name}--{spec.run_id}.shards"


def batch_path(d: Path, index: int) -> Path:
    return d / f"batch-{index:06d}.pkl"


def save_batch(d: Path, b: Batch) -> None:
    with atomic_path(batch_path(d, b.index)) as tmp:
        tmp.write_bytes(pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL))


def load_batch(d: Path, index: int, key: str | None = None) -> Batch | None:
    """A batch staged by a shard of this run (files are written by our own shards, atomically);
    None when there is none, or when ``key`` is given and the file was made from other items."""
    p = batch_path(d, index)
    if not p.is_file():
        return None
    b = pickle.loads(p.read_bytes())  # noqa: S301 - our own staging files
    return b if key is None or b.key == key else None


# ---- the job a shard receives ---------------------------------------------------------------------
def make_job(spec: RunSpec, shards: int, redis_url: str, attempt: str = "") -> dict[str, Any]:
    """JSON parameters for a shard (a Prefect deployment's parameters must be JSON)."""
    return {
        "attempt": attempt,
        "recipe": spec.recipe.model_dump(mode="json"),
        "recipe_path": spec.recipe_path,
        "run_id": spec.run_id,
        "fingerprint": spec.fingerprint,
        "item_start": spec.item_start,
        "shards": shards,
        "redis": redis_url,
        "dask": spec.dask,
    }


def spec_from_job(job: dict[str, Any]) -> RunSpec:
    from synthflow.recipe import Recipe

    recipe = Recipe.model_validate(job["recipe"])
    if recipe.fingerprint() != job["fingerprint"]:
        raise UserError(
            f"{job['recipe_path']}: this host resolves the recipe to fingerprint {recipe.fingerprint()}, "
            f"the run has {job['fingerprint']} (different seeds, model or scorer files on this host?)"
        )
    return RunSpec(
        recipe,
        job["recipe_path"],
        job["run_id"],
        job["fingerprint"],
        item_start=job["item_start"],
        dask=job.get("dask"),
    )


# ---- the Redis queue ---------------------------------------------------------------------------
class Queue:
    """Batch indices for the shards of one run, in Redis: ``next`` (INCR), the candidate count of
    each finished batch, the batch each shard is working on, and ``done``."""

    # INCR and the shard's claim in one step: a shard killed between them loses no batch
    _CLAIM = "local i = redis.call('INCR', KEYS[1]) - 1; redis.call('HSET', KEYS[2], ARGV[1], i); return i"

    def __init__(self, url: str, run_id: str, attempt: str = ""):
        import redis

        self.url = url
        self.r = redis.Redis.from_url(url)
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise UserError(f"redis at {url}: {e}") from None
        # one queue per attempt of the parent: shards left over from a killed parent keep to theirs
        self.k = f"synthflow:shards:{run_id}:{attempt}"

    def reset(self) -> None:
        self.r.delete(*(f"{self.k}:{x}" for x in ("next", "cands", "inflight", "done")))

    def claim(self, shard: int) -> int:
        return int(self.r.eval(self._CLAIM, 2, f"{self.k}:next", f"{self.k}:inflight", str(shard)))

    def inflight(self, shard: int) -> int | None:
        v = self.r.hget(f"{self.k}:inflight", str(shard))
        return None if v is None else int(v)

    def finish(self, shard: int, index: int, candidates: int) -> set[int]:
        """Batch ``index`` is staged; returns every batch index staged so far."""
        self.r.hset(f"{self.k}:cands", str(index), candidates)
        self.r.hdel(f"{self.k}:inflight", str(shard))
        return {int(k) for k in self.r.hkeys(f"{self.k}:cands")}

    def set_done(self) -> None:
        self.r.set(f"{self.k}:done", 1)

    def done(self) -> bool:
        return bool(self.r.exists(f"{self.k}:done"))

    def close(self) -> None:
        self.r.close()


class Admission:
    """The merge's admission, replayed by a shard over the staged batches ``0..k`` without a gap:
    a fresh copy of the recipe's dedup filters (those that admit), fed in batch order. The shards
    stop when this reaches ``n`` admitted rows, so the merge has its ``n`` rows (candidates that
    are duplicates of each other across shards do not count)."""

    def __init__(self, st: Stages):
        self.filters = recipe_filters(st.spec.recipe, st.spec.recipe_path, st.ctx, replica=True)
        self.cursor = 0
        self.admitted = 0

    def advance(self, d: Path, staged: set[int]) -> int:
        while self.cursor in staged:
            b = load_batch(d, self.cursor)
            if b is None:  # listed but not visible yet (e.g. shared storage): look again later
                break
            for acc in b.result.accepted():
                kept = acc.kept
                for f in self.filters:
                    kept = f.admit(kept).kept
                self.admitted += len(kept)
            self.cursor += 1
        return self.admitted

    def close(self) -> None:
        for f in self.filters:
            f.close()


def batch_items(spec: RunSpec, st: Stages, index: int) -> list[Any]:
    """The items of batch ``index``: those the one-process run plans as its ``index``-th batch."""
    r = spec.recipe
    first = index * r.batch_size
    if first >= r.budget:
        return []
    return st.generator.plan(spec.item_start + first, min(r.batch_size, r.budget - first))


def run_shard(job: dict[str, Any], shard: int) -> dict[str, Any]:
    """One shard: take batches from the queue until the run has enough candidates; stage each."""
    spec = spec_from_job(job)
    q = Queue(job["redis"], spec.run_id, job.get("attempt", ""))
    d = shard_dir(spec)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    st = Stages(spec)
    done: list[int] = []
    adm: Admission | None = None
    try:
        st.check_shardable()
        adm = Admission(st)
        st.prepare()
        redo = q.inflight(shard)  # a restarted shard first finishes the batch it had claimed
        while True:
            if q.done():
                break
            if redo is not None:
                i, redo = redo, None
            else:
                i = q.claim(shard)
            items = batch_items(spec, st, i)
            if not items:
                q.r.hdel(f"{q.k}:inflight", str(shard))
                break
            key = batch_key(spec, items)
            b = load_batch(d, i, key)
            if b is None:
                b = Batch(i, len(items), pipeline.process_batch(st, items), shard, key)
                save_batch(d, b)
            staged = q.finish(shard, i, sum(len(a.kept) for a in b.result.accepted()))
            done.append(i)
            if adm.advance(d, staged) >= spec.recipe.n:
                q.set_done()
        engines = {id(st.engine): st.engine, **{id(g): g for g in st.generator.generation_engines()}}
        report = {
            "shard": shard,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "batches": done,
            **usage_fields(usage_totals([g.usage() for g in engines.values()])),
            "wall_seconds": round(time.time() - t0, 2),
        }
    finally:
        if adm is not None:
            adm.close()
        st.close()
        q.close()
    with atomic_path(d / f"shard-{shard}.json") as tmp:
        tmp.write_text(json.dumps(report))
    return report


# ---- the parent's side ------------------------------------------------------------------------
def merge(run: Run, reports: list[dict[str, Any]]) -> None:
    """Replay the staged batches into the run's ledger in batch order, as the one-process run would;
    make any missing batch here; discard the batches past the point where the run reached ``n``."""
    spec, ledger = run.spec, run.ledger
    d = shard_dir(spec)
    st = run.stages
    B = spec.recipe.batch_size
    while not ledger.reached_target():
        i = ledger.planned // B
        items = run.next_items()
        if not items:
            break
        b = load_batch(d, i, batch_key(spec, items))
        # a batch no shard staged (its shard died after claiming it): the parent, prepared
        # before the shards started, makes it
        result = b.result if b is not None else pipeline.process_batch(st, items)
        pipeline.replay(result, st, ledger)
    for p in sorted(d.glob("batch-*.pkl")):
        i = int(p.stem.split("-")[1])
        if i * B >= ledger.planned:
            b = load_batch(d, i)
            ledger.discarded += b.items if b is not None else 0
    ledger.shard_reports = sorted(reports, key=lambda r: r["shard"])


def cleanup(spec: RunSpec) -> None:
    shutil.rmtree(shard_dir(spec), ignore_errors=True)


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """The Redis the shards share: ``url``, or else a private ``redis-server`` on a unix socket
    for local shards, stopped afterwards."""
    if url:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise UserError("--shards: needs redis-server on PATH (make sysdeps installs it) or --redis URL")
    tmp = tempfile.mkdtemp(prefix="synthflow-redis-")
    sock = os.path.join(tmp, "redis.sock")
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if os.path.exists(sock) or proc.poll() is not None:
                break
            time.sleep(0.025)
        if not os.path.exists(sock):
            raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m synthflow.shard JOB_JSON_FILE SHARD``: one local shard (the flow starts these)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    try:
        run_shard(job, int(args[1]))
    except UserError as e:
        print(f"synthflow: error: shard {args[1]}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from synthflow.shard import main as _main  # the module by name: pickled classes must not be __main__'s

    raise SystemExit(_main())
