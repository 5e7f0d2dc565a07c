"""The recipe flow: seeds -> generate -> verify -> dedup -> score -> accept -> write.

Tasks take a picklable :class:`RunSpec` and a batch (``recipe.batch_size`` records), never single
records, and return :class:`StageResult`s; the stage objects they use are built lazily in the
process that runs them (``stages_for``). Only the flow does the accounting (``Run``, the ledger).
Each task's input is the previous task's result, so the Prefect graph is the data's way.

With ``pipeline: true`` (the default) the next batch is generated in a worker thread while the
flow verifies, dedups and scores the previous one: at most 2 batches in flight. A batch made
ahead that the run turns out not to need (it reached ``n``) is discarded and its items are
un-planned, so the published rows are those of the sequential run. The engine task retries; the
generator's state is restored on failure and the response cache makes the retry regenerate only
what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from synthflow import shard as sharding
from synthflow.errors import UserError
from synthflow.generators.base import Item
from synthflow.record import StageResult
from synthflow.runner import FUNNEL, Overrides, Run, RunSpec, format_summary, stages_for

# the engine task's retries (tests set the delay to 0)
GENERATE_RETRIES = 2
RETRY_DELAY_S = float(os.environ.get("SYNTHFLOW_RETRY_DELAY_S", "5"))


@task(name="extract-seeds", retries=2, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def prepare(spec: RunSpec) -> float:
    """Seeds, generator, engines (started here) and the generator's one-time set-up."""
    st = stages_for(spec)
    seconds = st.prepare()
    # e.g. SkillMix's skill list: reviewable in the Prefect UI, saved with the run too
    for name, obj in st.generator.artifacts().items():
        create_markdown_artifact(
            key=f"{spec.recipe.name}-{name}".replace("_", "-").replace(".", "-").lower(),
            markdown=f"```json\n{json.dumps(obj, indent=2)[:50000]}\n```",
            description=f"{name} of run {spec.run_id}",
        )
    return seconds


@task(name="generate", retries=GENERATE_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def generate(spec: RunSpec, items: list[Item]) -> StageResult:
    return stages_for(spec).generate(items)


@task(name="verify", cache_policy=NO_CACHE)
def verify(spec: RunSpec, batch: StageResult) -> StageResult:
    return stages_for(spec).apply("verify", batch.kept)


@task(name="dedup", cache_policy=NO_CACHE)
def dedup(spec: RunSpec, batch: StageResult) -> StageResult:
    return stages_for(spec).apply("dedup", batch.kept)


@task(name="score", cache_policy=NO_CACHE)
def score(spec: RunSpec, batch: StageResult) -> StageResult:
    return stages_for(spec).apply("score", batch.kept)


@task(name="accept", cache_policy=NO_CACHE)
def accept(spec: RunSpec, batch: StageResult) -> tuple[StageResult, StageResult]:
    """Thresholds and the other accept filters, then admission into the dedup indexes."""
    st = stages_for(spec)
    kept = st.apply("accept", batch.kept)
    return kept, st.admit(kept.kept)


@task(name="write", cache_policy=NO_CACHE)
def write(spec: RunSpec, run: Run) -> dict[str, Any]:
    _, summary = run.finish()
    return summary


SHARD_RETRIES = 2


@task(name="shard", retries=SHARD_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def run_shard(job: dict[str, Any], shard: int, deployment: str | None = None) -> dict[str, Any]:
    """One shard: a local process, or a flow run of ``deployment`` on its work pool. A shard
    that dies (killed, crashed) fails this task and Prefect retries it; the new attempt resumes
    from the batch it had claimed, mostly from the response cache."""
    if deployment:
        from prefect.deployments import run_deployment

        fr = run_deployment(deployment, parameters={"job": job, "shard": shard}, timeout=None)
        if fr.state is None or not fr.state.is_completed():
            state = fr.state.name if fr.state else "unknown"
            raise RuntimeError(
                f"shard {shard}: flow run {fr.name} ended {state}: {fr.state and fr.state.message}"
            )
        return _report(job, shard)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "synthflow.shard", f.name, str(shard)],
            # N engines on this host: each takes 1/N of the memory share and its own cores
            env={
                **os.environ,
                "SYNTHFLOW_ENGINES_PER_HOST": str(job["shards"]),
                "SYNTHFLOW_ENGINE_SLOT": str(shard),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
        raise RuntimeError(f"shard {shard} exited {p.returncode}: {tail[0][:300]}")
    return _report(job, shard)


def _report(job: dict[str, Any], shard: int) -> dict[str, Any]:
    """What the shard wrote beside its batches (the output storage is shared by every host)."""
    return json.loads((sharding.shard_dir(sharding.spec_from_job(job)) / f"shard-{shard}.json").read_text())


@task(name="merge", cache_policy=NO_CACHE)
def merge(run: Run, reports: list[dict[str, Any]]) -> None:
    """The shards' batches into the ledger in batch order (the one-process run's rows)."""
    sharding.merge(run, reports)


def run_sharded(run: Run, shards: int, work_pool: str | None, redis_url: str | None) -> None:
    """N shards at once, then one merge; a shard that keeps failing fails the run, unpublished."""
    import secrets

    from prefect.futures import as_completed

    spec = run.spec
    sharding.check_shardable(stages_for(spec))
    if work_pool and not redis_url:
        raise UserError("--work-pool: pass --redis URL, a Redis every worker host can reach")
    # the generator's one-time set-up here, as in the one-process run: its artifacts (SkillMix's
    # skills) belong to the published run, and the shards on this host find its answers cached
    run.seconds["prepare"] += prepare(spec)
    with sharding.redis_for(redis_url) as url:
        q = sharding.Queue(url, spec.run_id, attempt=secrets.token_hex(4))
        q.reset()
        job = sharding.make_job(spec, shards, url, attempt=q.k.rsplit(":", 1)[1])
        deployment = None
        if work_pool:
            from flows.shard_flow import register

            deployment = register(work_pool)
        futures = {run_shard.submit(job, k, deployment): k for k in range(shards)}
        reports, failed = [], []
        for fut in as_completed(list(futures)):
            try:
                reports.append(fut.result())
            except Exception as e:  # noqa: BLE001 - reported below, nothing is published
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                failed.append(f"shard {futures[fut]}: {msg}")
                q.set_done()  # the run fails: the other shards stop after their current batch
        q.reset()
        q.close()
    failed.sort()
    if failed:
        raise ShardFailed(
            f"{len(failed)} of {shards} shards failed after {1 + SHARD_RETRIES} attempts; nothing was "
            f"published ({'; '.join(failed)})"
        )
    merge(run, reports)


class ShardFailed(UserError):
    pass


def _progress(run: Run) -> Any:
    if os.environ.get("SYNTHFLOW_PROGRESS", "1") == "0":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.recipe.n, desc=f"{run.recipe.name}: accepted", unit="row", dynamic_ncols=True)


@task(name="revise", retries=GENERATE_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def revise(spec: RunSpec, verified: StageResult, scored: StageResult, accepted: Any, rnd: int) -> StageResult:
    """The rejects of one pass (verify, score, accept), revised; it takes those tasks' results, so
    the Prefect graph shows revision downstream of the checks that rejected the rows."""
    kept = accepted[0]
    return stages_for(spec).revise([*verified.rejects, *scored.rejects, *kept.rejects], rnd)


def check_batch(run: Run, generated: StageResult) -> None:
    """verify -> dedup -> score -> accept for one generated batch; the flow keeps the ledger. With
    the recipe's ``revise``, rows rejected for a fixable reason are revised and take the same path
    again, for up to ``revise.rounds`` rounds."""
    passed = _check(run, generated)
    cfg = run.recipe.revise
    for rnd in range(1, (cfg.rounds if cfg else 0) + 1):
        revised = revise(run.spec, *(opaque(x) for x in passed), rnd)
        run.add_revised(revised)
        if not revised.kept:
            break
        passed = _check(run, revised)


def _check(run: Run, batch: StageResult) -> tuple[StageResult, StageResult, Any]:
    """One pass of the checks; returns the verify, score and accept results (their rejects are the
    candidates for a revision)."""
    spec = run.spec
    v = verify(spec, opaque(batch))
    run.add_stage("verify", v)
    d = dedup(spec, opaque(v))
    run.add_stage("dedup", d)
    s = score(spec, opaque(d))
    run.add_stage("score", s)
    accepted = accept(spec, opaque(s))
    kept, admitted = accepted
    run.add_stage("accept", kept)
    run.add_admitted(admitted)
    return v, s, accepted


@flow(name="synthflow-recipe", log_prints=True)
def run_recipe(
    recipe: str = "recipes/math.yaml",
    n: int | None = None,
    model: str | None = None,
    out: str | None = None,
    engine: str | None = None,
    base_url: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    max_items: int | None = None,
    sets: list[str] | None = None,
    seed_from_date: bool = False,
    shards: int = 1,
    work_pool: str | None = None,
    redis: str | None = None,
    dask: str | None = None,
) -> dict[str, Any]:
    """Run one recipe end to end and publish its dataset. ``seed_from_date`` (for schedules)
    makes each day's run draw new samples, so a nightly deployment adds new rows. ``shards``
    splits the run's batches over that many processes (``work_pool``: flow runs on that Prefect
    work pool's workers), sharing the Redis at ``redis`` (default: a private local one). ``dask``
    (an address or local:N) runs the verify step's sandboxes on a Dask cluster."""
    if seed_from_date and seed is None:
        seed = int(datetime.now(UTC).strftime("%Y%m%d"))
    ov = Overrides(
        n=n,
        model=model,
        out=out,
        engine=engine,
        base_url=base_url,
        seed=seed,
        batch_size=batch_size,
        max_items=max_items,
        sets=sets,
    )
    run = Run.open(recipe, ov, dask=dask)  # validation, the run's claim and item range: in the flow process
    spec = run.spec
    bar = None
    pending = None
    try:
        if shards > 1:
            run_sharded(run, shards, work_pool, redis)
            summary = write(spec, run)
            sharding.cleanup(spec)
            return _artifacts(run, summary)
        bar = _progress(run)
        pct, line = run.progress()
        progress_id = create_progress_artifact(
            pct, key=f"{run.recipe.name}-progress".replace("_", "-"), description=line
        )
        run.seconds["prepare"] += prepare(spec)
        items = run.next_items()
        pending = generate.submit(spec, items) if items else None
        while pending is not None:
            generated = pending.result()
            run.add_generated(generated)
            ahead: list[Item] = []
            pending = None
            if run.recipe.pipeline:
                ahead = run.next_items()  # made while this batch is checked
                pending = generate.submit(spec, ahead) if ahead else None
            check_batch(run, generated)
            if pending is not None and run.reached_target():
                pending.wait()  # not needed: undo it, as if it had never been made
                stages_for(spec).discard_last()
                run.unplan(ahead)
                pending = None
            elif not run.recipe.pipeline and (items := run.next_items()):
                pending = generate.submit(spec, items)
            pct, line = run.progress()
            update_progress_artifact(progress_id, pct, description=line)  # the Prefect UI's view
            if bar is not None:
                bar.n = len(run.accepted)
                bar.set_postfix(generated=run.counts["generated"], planned=run.planned, refresh=False)
                bar.refresh()
        if bar is not None:
            bar.close()
        summary = write(spec, run)
        sharding.cleanup(spec)  # batches staged by an earlier, sharded attempt of this run
    finally:
        if pending is not None:  # a failure while a batch was made ahead: let it end first
            pending.wait()
        run.close()
    return _artifacts(run, summary)


def _artifacts(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    counts = summary["counts"]
    report = Path(summary.get("path", "")) / "report.html"
    if report.is_file():
        create_link_artifact(
            key=f"{run.recipe.name}-report".replace("_", "-"),
            link=report.resolve().as_uri(),
            link_text=f"report.html of run {run.run_id}",
            description="HTML report: funnel, scores, token lengths, coverage, dedup, cost, sample rows",
        )
    create_table_artifact(
        key=f"{run.recipe.name}-stage-counts".replace("_", "-"),
        table=[{"stage": k, "rows": counts[k]} for k in FUNNEL],
        description=f"Stage counts of run {run.run_id}",
    )
    create_markdown_artifact(
        key=f"{run.recipe.name}-run-summary".replace("_", "-"),
        markdown="```\n" + format_summary(summary) + "\n```",
        description=f"Run summary of {run.run_id}",
    )
    return summary
