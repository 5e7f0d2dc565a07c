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
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

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


def _progress(run: Run) -> Any:
    if os.environ.get("SYNTHFLOW_PROGRESS", "1") == "0":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.recipe.n, desc=f"{run.recipe.name}: accepted", unit="row", dynamic_ncols=True)


def check_batch(run: Run, generated: StageResult) -> None:
    """verify -> dedup -> score -> accept for one generated batch; the flow keeps the ledger."""
    spec = run.spec
    v = verify(spec, opaque(generated))
    run.add_stage("verify", v)
    d = dedup(spec, opaque(v))
    run.add_stage("dedup", d)
    s = score(spec, opaque(d))
    run.add_stage("score", s)
    kept, admitted = accept(spec, opaque(s))
    run.add_stage("accept", kept)
    run.add_admitted(admitted)


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
) -> dict[str, Any]:
    """Run one recipe end to end and publish its dataset. ``seed_from_date`` (for schedules)
    makes each day's run draw new samples, so a nightly deployment adds new rows."""
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
    run = Run.open(recipe, ov)  # validation, the run's claim and item range: in the flow process
    spec = run.spec
    bar = None
    pending = None
    try:
        bar = _progress(run)
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
            if bar is not None:
                bar.n = len(run.accepted)
                bar.set_postfix(generated=run.counts["generated"], planned=run.planned, refresh=False)
                bar.refresh()
        if bar is not None:
            bar.close()
        summary = write(spec, run)
    finally:
        if pending is not None:  # a failure while a batch was made ahead: let it end first
            pending.wait()
        run.close()
    counts = summary["counts"]
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
