"""One run of a recipe, as the flow process sees it: validate and claim it (its run id, lock and
item range), plan its batches, keep its ledger, publish its dataset and report.

``flows/`` wires this into Prefect; nothing here imports Prefect. The batch loop itself is
:func:`synthflow.pipeline.process_batch`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from synthflow import pipeline, registry, runlock
from synthflow import summary as summaries
from synthflow.generators.base import Item
from synthflow.ledger import Ledger
from synthflow.recipe import Recipe, load_recipe
from synthflow.spec import Overrides, RunSpec
from synthflow.stages import Stages, keep_stages, release_stages, stages_for
from synthflow.store import completed_runs


def check(recipe_path: str, overrides: Overrides | None = None, shards: int = 1) -> Recipe:
    """Validate recipe, seeds, generator, filters and engine reachability; no side effects."""
    recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
    st = Stages(RunSpec(recipe, str(recipe_path), run_id="check", fingerprint=recipe.fingerprint()))
    try:
        if shards > 1:
            st.check_shardable()
    finally:
        st.close()
    return recipe


class Run:
    """A claimed run: its picklable spec, its ledger, and (lazily, in this process) its stages."""

    def __init__(self, spec: RunSpec, lock: Any = None):
        self.spec = spec
        self.ledger = Ledger(spec.recipe.n, pool_factor_of(spec.recipe))
        self.summary_final: dict[str, Any] | None = None
        self._lock = lock

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None}  # the run lock stays with the flow process

    @property
    def recipe(self) -> Recipe:
        return self.spec.recipe

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def stages(self) -> Stages:
        return stages_for(self.spec)

    @classmethod
    def open(cls, recipe_path: str, overrides: Overrides | None = None, run_id: str | None = None,
             dask: str | None = None) -> Run:  # fmt: skip
        """Validate everything, then claim a run: resume an unfinished run of this recipe whose
        process is gone (its lock is free), else start a new one; reserve its item range."""
        recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
        fp = recipe.fingerprint()
        root = Path(recipe.output.root)
        rid, resumed, lock = runlock.claim_run(root, recipe.name, fp, str(recipe_path), run_id)
        stages = None
        try:
            stages = Stages(RunSpec(recipe, str(recipe_path), rid, fp, resumed=resumed, dask=dask))
            # a later run of the same recipe continues the sample stream instead of redrawing it
            start = runlock.reserve_items(
                root, recipe.name, fp, rid, recipe.budget, floor=previous_items(root, recipe.name, fp)
            )
        except BaseException:  # bad input: nothing of this run is left behind
            if stages is not None:
                stages.close()
            runlock.abandon_run(root, recipe.name, fp, rid, lock, keep_marker=resumed)
            raise
        spec = RunSpec(recipe, str(recipe_path), rid, fp, item_start=start, resumed=resumed, dask=dask)
        stages.spec = spec
        keep_stages(spec, stages)
        run = cls(spec, lock)
        run.ledger.counts["seeds"] = len(stages.seeds)
        return run

    # ---- planning ------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.ledger.reached_target() or self.ledger.planned >= self.recipe.budget

    def next_items(self) -> list[Item]:
        """The next batch's items (none when the run is done), counted as planned."""
        if self.done():
            return []
        count = min(self.recipe.batch_size, self.recipe.budget - self.ledger.planned)
        items = self.stages.generator.plan(self.spec.item_start + self.ledger.planned, count)
        self.ledger.planned += count
        return items

    def unplan(self, items: list[Item]) -> None:
        """Items made ahead that the run did not need: the next run draws them again."""
        self.ledger.planned -= len(items)
        self.ledger.discarded += len(items)

    def progress(self) -> tuple[float, str]:
        return self.ledger.progress(self.recipe.budget)

    # ---- finishing -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return summaries.build(self.spec, self.ledger, self.stages)

    def finish(self) -> tuple[Path, dict[str, Any]]:
        """Publish (in this process), then end the claim: the resume marker and the lock go."""
        path = publish(self)
        runlock.finish_run(
            Path(self.recipe.output.root),
            self.recipe.name,
            self.spec.fingerprint,
            self.run_id,
            self.ledger.planned,
        )
        assert self.summary_final is not None
        return path, self.summary_final

    def close(self) -> None:
        release_stages(self.spec)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def run_plain(recipe_path: str, overrides: Overrides | None = None) -> dict[str, Any]:
    """A whole run in this process without Prefect: the batch loop over the planned batches, one
    after the other, then publish. The benches' baseline, and how tests run a recipe on the real
    engine they share (the flow adds tasks, retries and making the next batch ahead)."""
    run = Run.open(recipe_path, overrides)
    try:
        run.ledger.seconds["prepare"] += run.stages.prepare()
        while items := run.next_items():
            pipeline.process_batch(run.stages, items, sink=run.ledger)
        _, summary = run.finish()
    finally:
        run.close()
    return summary


def pool_factor_of(recipe: Recipe) -> float:
    """How many times n rows a run gathers before choosing: a ``select`` filter's pool_factor."""
    for f in recipe.filters:
        if f.name == "select":
            return float(registry.get("filter", "select").validate_params(f.params, "select").pool_factor)
    return 1.0


def publish(run: Run) -> Path:
    """Under the output root's publish lock: drop the rows that runs which overlapped this one
    published first, add the rows to the cross-run dedup indexes, then write the rows and rejects
    and publish them atomically (a run stopped between the two is resumable, and its resumed run
    owns its index segment; the other order would let a later run publish its rows again). Then
    write the report."""
    st, ledger = run.stages, run.ledger
    with runlock.publishing(Path(run.recipe.output.root)):
        for fs in st.filters.values():
            for f in fs:
                res = f.recheck(ledger.accepted)
                if res.rejects:
                    ledger.drop_at_publish(res)
        for f in st.filters["accept"]:
            if hasattr(f, "choose"):  # a pool-level selection chooses n rows of the pool now
                ledger.select(f.choose(ledger.accepted, run.recipe.n))
        for fs in st.filters.values():
            for f in fs:
                f.finalize(ledger.accepted)
        summary = run.summary()
        accepted = {r.id for r in ledger.accepted}
        for fs in st.filters.values():
            for f in fs:
                f.commit(accepted)
        st.writer.add(ledger.accepted, ledger.rejects)
        path = st.writer.finalize(
            summary, st.generator.artifacts(), card_extra=st.card_extra(ledger.accepted)
        )
    run.summary_final = {**summary, "path": str(path)}
    write_run_report(path)
    return path


def write_run_report(run_dir: Path) -> Path | None:
    """``report.html`` beside the card. The data is published already: a report that fails is a
    warning, never a lost run."""
    from synthflow import report

    try:
        return report.write(run_dir / "report.html", report.run_report(run_dir))
    except Exception as e:  # noqa: BLE001 - the run's data must not depend on its report
        print(
            f"synthflow: warning: {run_dir}/report.html not written ({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return None


def previous_items(root: Path, recipe: str, fingerprint: str) -> int:
    """Items planned by earlier finished runs of the same recipe fingerprint under ``root``."""
    total = 0
    for run_dir in completed_runs(root):
        if run_dir.parent.name != recipe:
            continue
        try:
            s = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if s.get("fingerprint") == fingerprint:
            total += int(s.get("items_planned", 0))
    return total
