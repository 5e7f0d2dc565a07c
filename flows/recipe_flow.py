"""The recipe flow: seeds -> generate -> verify -> dedup -> score -> accept -> write.

Tasks take whole batches (``recipe.batch_size`` records), never single records. The engine task
retries; the response cache makes a retry (or a rerun after a crash) regenerate only what is missing.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from synthflow.generators.base import Item
from synthflow.record import Record
from synthflow.runner import FUNNEL, Overrides, Run, format_summary


@task(name="extract-seeds", cache_policy=NO_CACHE)
def open_run(recipe: str, overrides: Overrides) -> Run:
    return Run.open(recipe, overrides)


@task(name="prepare-generator", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def prepare(run: Run) -> None:
    run.prepare()
    # e.g. SkillMix's skill list: reviewable in the Prefect UI, saved with the run too
    for name, obj in run.generator.artifacts().items():
        create_markdown_artifact(
            key=f"{run.recipe.name}-{name}".replace("_", "-").replace(".", "-").lower(),
            markdown=f"```json\n{json.dumps(obj, indent=2)[:50000]}\n```",
            description=f"{name} of run {run.run_id}",
        )


@task(name="generate", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def generate(run: Run, items: list[Item]) -> list[Record]:
    return run.generate(items).kept


@task(name="verify", cache_policy=NO_CACHE)
def verify(run: Run, records: list[Record]) -> list[Record]:
    return run.apply("verify", records)


@task(name="dedup", cache_policy=NO_CACHE)
def dedup(run: Run, records: list[Record]) -> list[Record]:
    return run.apply("dedup", records)


@task(name="score", cache_policy=NO_CACHE)
def score(run: Run, records: list[Record]) -> list[Record]:
    return run.apply("score", records)


@task(name="accept", cache_policy=NO_CACHE)
def accept(run: Run, records: list[Record]) -> None:
    run.accept(run.apply("accept", records))


@task(name="write", cache_policy=NO_CACHE)
def write(run: Run) -> dict[str, Any]:
    _, summary = run.finish()
    return summary


def _progress(run: Run) -> Any:
    if os.environ.get("SYNTHFLOW_PROGRESS", "1") == "0":
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.recipe.n, desc=f"{run.recipe.name}: accepted", unit="row", dynamic_ncols=True)


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
    run = open_run(
        recipe,
        Overrides(
            n=n,
            model=model,
            out=out,
            engine=engine,
            base_url=base_url,
            seed=seed,
            batch_size=batch_size,
            max_items=max_items,
            sets=sets,
        ),
    )
    bar = _progress(run)
    try:
        prepare(run)
        while items := run.next_batch():
            records = generate(run, items)
            records = verify(run, records)
            records = dedup(run, records)
            records = score(run, records)
            accept(run, records)
            if bar is not None:
                bar.n = len(run.accepted)
                bar.set_postfix(generated=run.counts["generated"], planned=run.planned, refresh=False)
                bar.refresh()
        if bar is not None:
            bar.close()
        summary = write(run)
    finally:
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
