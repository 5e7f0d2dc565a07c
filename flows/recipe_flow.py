"""The recipe flow: seeds -> generate -> verify -> dedup -> score -> accept -> write.

The batch loop is :func:`synthflow.pipeline.process_batch`; the flow only says where each step
runs: as a Prefect task (``generate-3``, ``verify-3``, ...), taking a picklable :class:`RunSpec`
and a batch and returning a :class:`StageResult`; the stage objects they use are built lazily in
the process that runs them (``stages_for``). Only the flow does the accounting (the run's ledger).
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

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from synthflow import pipeline
from synthflow import shard as sharding
from synthflow.errors import UserError
from synthflow.funnel import funnel, funnel_text
from synthflow.generators.base import Item
from synthflow.model import public_model_name
from synthflow.record import StageResult
from synthflow.run import Run
from synthflow.spec import Overrides, RunSpec
from synthflow.stages import stages_for
from synthflow.summary import format_summary

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


@task(name="step", cache_policy=NO_CACHE)
def step(spec: RunSpec, name: str, *args: Any) -> StageResult:
    """One step of the batch loop (verify, dedup, score, accept, revise) on this process's stages."""
    return pipeline.dispatch(stages_for(spec), name, *args)


def _wrap(a: Any) -> Any:
    """Results go to a task as they are (Prefect links the tasks by them), without Prefect
    walking their rows; a list of results (revise's) goes as a list of such."""
    return (
        [opaque(x) for x in a] if isinstance(a, list) and a and isinstance(a[0], StageResult) else opaque(a)
    )


def prefect_steps(spec: RunSpec, batch: int, last: list[Any] | None = None) -> pipeline.StepRunner:
    """The loop's steps as Prefect tasks named after the step and the batch (``verify-3``); each
    takes the previous step's result, so the graph follows the data. ``last`` keeps the latest
    result (``write`` takes it, so the graph ends in ``write``)."""

    def run(name: str, *args: Any) -> StageResult:
        task_ = revise if name == "revise" else step
        res = task_.with_options(name=name, task_run_name=f"{name}-{batch}")(
            spec, name, *(_wrap(a) for a in args)
        )
        if last is not None:
            last[:] = [res]
        return res

    return run


@task(name="write", cache_policy=NO_CACHE)
def write(spec: RunSpec, run: Run, after: Any = None) -> dict[str, Any]:
    """Publish the run. ``after``: the last step's result, only so the graph links it here."""
    _, summary = run.finish()
    return summary


def _name_the_flow_run(spec: RunSpec) -> None:
    """The flow run in the Prefect UI: named ``<recipe>-<run id>`` and tagged with the recipe,
    model and engine (the run id is known only once the run is claimed)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    e = spec.recipe.engine
    model = public_model_name(str(e.model or "default"))
    tags = sorted(
        {*(flow_run.tags or []), f"recipe:{spec.recipe.name}", f"model:{model}", f"engine:{e.name}"}
    )
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{spec.recipe.name}-{spec.run_id}", tags=tags)
    except Exception as ex:  # noqa: BLE001 - a label in the UI is not worth failing the run for
        get_run_logger().warning(f"could not name the flow run: {ex}")


def _watch_cancellation(interval_s: float = 2.0) -> None:
    """Cancelling the flow run in the Prefect UI or CLI (``prefect flow-run cancel``) stops a run
    started from the CLI the way Ctrl-C does: a thread watches the run's state; on Cancelling it
    marks the run Cancelled and signals the supervisor (SIGUSR1), which stops every process the run
    started. (A run that a worker or ``serve`` started is cancelled by Prefect itself.)"""
    import signal
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Cancelled

    run_id = flow_run.id
    supervisor = os.getppid() if os.environ.get("SYNTHFLOW_SUPERVISED") == "1" else None
    if run_id is None or supervisor is None:
        return

    def watch() -> None:
        try:
            with get_client(sync_client=True) as client:
                while True:
                    time.sleep(interval_s)
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.name in ("Cancelling", "Cancelled"):
                        client.set_flow_run_state(run_id, Cancelled(message="cancelled; stopped by synthflow"),
                                                  force=True)  # fmt: skip
                        os.kill(supervisor, signal.SIGUSR1)
                        return
        except Exception:  # noqa: BLE001, S110 - the API gone (the run ending): nothing to watch
            return

    threading.Thread(target=watch, name="synthflow-cancel-watch", daemon=True).start()


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    recipe = str((flow_run.parameters or {}).get("recipe") or "recipe")
    return f"{Path(recipe).stem}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"


SHARD_RETRIES = 2


@task(name="shard", retries=SHARD_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def run_shard(job: dict[str, Any], shard: int, deployment: str | None = None) -> dict[str, Any]:
    """One shard: a local process, or a flow run of ``deployment`` on its work pool. A shard
    that dies (killed, crashed) fails this task and Prefect retries it; the new attempt resumes
    from the batch it had claimed, mostly from the response cache."""
    if deployment:
        from prefect.deployments import run_deployment

        # the shard's state is read every second (Prefect's default, 5 s, adds up to 5 s per shard)
        fr = run_deployment(
            deployment, parameters={"job": job, "shard": shard}, timeout=None, poll_interval=1
        )
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
    stages_for(spec).check_shardable()
    if work_pool and not redis_url:
        raise UserError("--work-pool: pass --redis URL, a Redis every worker host can reach")
    # the generator's one-time set-up here, as in the one-process run: its artifacts (SkillMix's
    # skills) belong to the published run, and the shards on this host find its answers cached
    run.ledger.seconds["prepare"] += prepare(spec)
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

    from synthflow import terminal

    return tqdm(total=run.recipe.n, desc=f"{run.recipe.name}: accepted", unit="row", dynamic_ncols=True,
                file=terminal.err())  # fmt: skip


@task(name="revise", retries=GENERATE_RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=NO_CACHE)
def revise(spec: RunSpec, name: str, checked: Any, rnd: int) -> StageResult:
    """A revision round over a pass's rejects; it takes the verify, score and accept tasks'
    results, so the Prefect graph shows revision downstream of the checks that rejected the rows."""
    return pipeline.dispatch(stages_for(spec), name, checked, rnd)


@flow(name="synthflow-recipe", log_prints=True, flow_run_name=_flow_run_name)
def run_recipe(
    recipe: str = "recipes/math.yaml",
    overrides: Overrides | None = None,
    seed_from_date: bool = False,
    shards: int = 1,
    work_pool: str | None = None,
    redis: str | None = None,
    dask: str | None = None,
) -> dict[str, Any]:
    """Run one recipe end to end and publish its dataset. ``overrides``: recipe fields to change
    (``n``, ``model``, ``sets``, ...). ``seed_from_date`` (for schedules) makes each day's run draw
    new samples, so a nightly deployment adds new rows. ``shards`` splits the run's batches over that
    many processes (``work_pool``: flow runs on that Prefect work pool's workers), sharing the Redis
    at ``redis`` (default: a private local one). ``dask`` (an address or local:N) runs the verify
    step's sandboxes on a Dask cluster."""
    ov = overrides or Overrides()
    if seed_from_date and ov.seed is None:
        ov = ov.model_copy(update={"seed": int(datetime.now(UTC).strftime("%Y%m%d"))})
    run = Run.open(recipe, ov, dask=dask)  # validation, the run's claim and item range: in the flow process
    spec, ledger = run.spec, run.ledger
    log = get_run_logger()
    bar = None
    pending = None
    try:
        _name_the_flow_run(spec)
        _watch_cancellation()
        log.info(f"run {spec.run_id} of recipe {spec.recipe.name}" + (" (resumed)" if spec.resumed else "")
                 + f": {spec.recipe.n} rows wanted, at most {spec.recipe.budget} items")  # fmt: skip
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
        prep = prepare.submit(spec)
        ledger.seconds["prepare"] += prep.result()
        batch = 0
        last: list[Any] = []
        items = run.next_items()
        pending = _generate(spec, items, batch, wait_for=[prep]) if items else None
        while pending is not None:
            generated = pending.result()
            ahead: list[Item] = []
            pending = None
            if run.recipe.pipeline:
                ahead = run.next_items()  # made while this batch is checked
                pending = _generate(spec, ahead, batch + 1) if ahead else None
            pipeline.process_batch(
                stages_for(spec), [], step=prefect_steps(spec, batch, last), sink=ledger, generated=generated
            )
            pct, line = run.progress()
            log.info(f"batch {batch}: {line}")
            batch += 1
            if pending is not None and ledger.reached_target():
                pending.wait()  # not needed: undo it, as if it had never been made
                stages_for(spec).discard_last()
                run.unplan(ahead)
                pending = None
            elif not run.recipe.pipeline and (items := run.next_items()):
                pending = _generate(spec, items, batch)
            pct, line = run.progress()
            update_progress_artifact(progress_id, pct, description=line)  # the Prefect UI's view
            if bar is not None:
                bar.n = len(ledger.accepted)
                bar.set_postfix(generated=ledger.counts["generated"], planned=ledger.planned, refresh=False)
                bar.refresh()
        if bar is not None:
            bar.close()
        summary = write(spec, run, _wrap(last[0]) if last else None)
        log.info(format_summary(summary))
        sharding.cleanup(spec)  # batches staged by an earlier, sharded attempt of this run
    finally:
        if pending is not None:  # a failure while a batch was made ahead: let it end first
            pending.wait()
        run.close()
    return _artifacts(run, summary)


def _generate(spec: RunSpec, items: list[Item], batch: int, wait_for: list[Any] | None = None) -> Any:
    return generate.with_options(task_run_name=f"generate-{batch}").submit(spec, items, wait_for=wait_for)


def _artifacts(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    report = Path(summary.get("path", "")) / "report.html"
    # the key figures here, and where the report is (a browser refuses a file:// link from the UI)
    figures = [
        f"**{summary['counts'].get('accepted', 0)} rows accepted** of {summary['counts'].get('generated', 0)} "
        f"generated; model `{public_model_name(summary.get('model'))}` via `{summary.get('engine')}`",
        *([f"**{summary['shortfall']}**"] if summary.get("shortfall") else []),
        f"funnel: {funnel_text(summary)}",
        f"dataset: `{summary.get('path', '?')}`",
        *(
            [
                f"report: `{report.resolve()}` (open it from a file manager, or `synthflow report "
                f"{summary.get('path')}` writes it again)"
            ]
            if report.is_file()
            else []
        ),  # fmt: skip
    ]
    create_markdown_artifact(
        key=f"{run.recipe.name}-report".replace("_", "-"),
        markdown="\n\n".join(f"- {x}" for x in figures),
        description=f"Key figures of run {run.run_id}",
    )
    create_table_artifact(
        key=f"{run.recipe.name}-stage-counts".replace("_", "-"),
        table=[
            {"stage": f["stage"], "rows": f["rows"], "removed here": sum(f["removed"].values())}
            for f in funnel(summary)
        ],  # fmt: skip
        description=f"Stage counts of run {run.run_id}",
    )
    create_markdown_artifact(
        key=f"{run.recipe.name}-run-summary".replace("_", "-"),
        markdown="```\n" + format_summary(summary) + "\n```",
        description=f"Run summary of {run.run_id}",
    )
    return summary
