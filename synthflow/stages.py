"""A run's working parts (generator, engines by role, filters by step, writer), built from a
:class:`RunSpec` in whichever process runs a step. Each method takes a batch and returns a
:class:`StageResult`; nothing here counts (the ledger does), and nothing here knows Prefect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from synthflow import registry
from synthflow import revise as revising
from synthflow.engines.base import Sampling
from synthflow.engines.cache import CachedEngine
from synthflow.engines.pool import EnginePool
from synthflow.errors import UserError
from synthflow.filtering import STEPS, Filter, FilterContext
from synthflow.generators.base import Generator, Item
from synthflow.recipe import Recipe
from synthflow.record import Record, StageResult
from synthflow.scoring import ScoreContext, ScoreStage, build_scorers
from synthflow.seeds import extract_seeds
from synthflow.spec import RunSpec
from synthflow.store import RunWriter


def open_engines(recipe: Recipe, recipe_path: str, pool: EnginePool) -> tuple[CachedEngine, ScoreStage]:
    """The generator's engine and the score step (its scorers with their engines by role); every
    engine is preflighted, so a down endpoint or a bad scorer model fails before any work."""
    engine = pool.add("generator", recipe.engine, where="field engine.name")
    engine.engine.preflight()  # e.g. a down endpoint is a user error before anything runs
    ctx = ScoreContext(
        engines=pool,
        generator_engine=recipe.engine,
        generator=recipe.generator.name,
        seed=recipe.seed,
        where=f"{recipe_path}: field scoring",
    )
    stage = ScoreStage(build_scorers(recipe.scoring, ctx))
    stage.preflight()
    return engine, stage


def recipe_filters(recipe: Recipe, recipe_path: str, ctx: FilterContext, replica: bool = False) -> list[Any]:
    """The recipe's filters, in recipe order. ``replica``: only those that admit rows into an index
    (dedup), each a fresh copy that does not write a shared (Redis) index: a shard's replay of the
    merge's admission."""
    out: list[Any] = []
    try:
        for i, fc in enumerate(recipe.filters):
            cls_ = registry.get("filter", fc.name, f"field filters[{i}].name")
            if replica and cls_.admit is Filter.admit:
                continue
            params = cls_.validate_params(fc.params, f"{recipe_path}: field filters[{i}]")
            if replica and getattr(params, "redis", None) is not None:
                params = params.model_copy(update={"redis": None})
            out.append(cls_(params, ctx))
    except BaseException:
        for f in out:
            f.close()
        raise
    return out


def build_filters(
    recipe: Recipe, recipe_path: str, ctx: FilterContext, score_stage: ScoreStage
) -> dict[str, list[Any]]:
    filters: dict[str, list[Any]] = {step: [] for step in STEPS}
    filters["score"].append(score_stage)
    try:
        for f in recipe_filters(recipe, recipe_path, ctx):
            filters[f.bucket].append(f)
        if not any(fc.name == "sft" for fc in recipe.filters):  # every run checks SFT fit, last
            sft = registry.get("filter", "sft")
            o = recipe.output
            params = sft.validate_params(
                {"tokenizer": o.target_tokenizer, "max_seq_len": o.max_seq_len}, "sft"
            )
            filters["accept"].append(sft(params, ctx))
    except BaseException:
        for fs in filters.values():
            for f in fs:
                f.close()
        raise
    return filters


class Stages:
    """A run's working parts, built from a :class:`RunSpec` in whichever process runs a stage."""

    def __init__(self, spec: RunSpec):
        recipe, where = spec.recipe, spec.recipe_path
        self.spec = spec
        gen_cls = registry.get("generator", recipe.generator.name)
        self.seeds = extract_seeds(recipe.seeds, where, gen_cls.seed_fields, f"{gen_cls.name} generator")
        self.generator = gen_cls(recipe, self.seeds, run_id=spec.run_id)
        self.engines = EnginePool()
        try:
            self.engine, score_stage = open_engines(recipe, where, self.engines)
            self.generator.bind_engines(self.engines, where)  # members of an ensemble: roles of their own
            ctx = FilterContext(
                recipe=recipe,
                generator=self.generator,
                out_root=Path(recipe.output.root),
                run_id=spec.run_id,
                dask=spec.dask,
                engines=self.engines,
            )
            self.filters = build_filters(recipe, where, ctx, score_stage)
            self.ctx = ctx
        except BaseException:
            self.engines.close()
            raise
        columns = dict(self.generator.columns)
        if recipe.revise is not None:
            g = self.generator
            if g.response_field is None and type(g).apply_revision is Generator.apply_revision:
                self.engines.close()
                raise UserError(
                    f"{where}: revise: generator {g.name} has no answer to revise; remove `revise`"
                )
            columns.update(revising.COLUMNS)
        for fs in self.filters.values():
            for f in fs:
                columns.update(f.columns)
        self.writer = RunWriter(Path(recipe.output.root), recipe, spec.run_id, columns, score_stage.outputs)
        self._before_last: Any = None  # generator state before the latest generate call

    @property
    def sampling(self) -> Sampling:
        s, e = self.spec.recipe.sampling, self.spec.recipe.engine
        return Sampling(s.temperature, s.top_p, s.max_tokens, e.seed, tuple(s.stop))

    def prepare(self) -> float:
        """The generator's one-time set-up (e.g. SkillMix's skill extraction). Returns its
        seconds. Engines start on their first call (a fully cached rerun never loads vLLM), in
        whichever thread makes it, under the engine's lock."""
        t0 = time.perf_counter()
        self.generator.prepare(self.engine, self.sampling)
        return time.perf_counter() - t0

    def generate(self, items: list[Item]) -> StageResult:
        """One batch through the generator. Its state (e.g. Self-Instruct's pool) is checkpointed
        first: a failed call restores it, so a retry renders the same prompts and hits the cache."""
        before = self.generator.checkpoint()
        t0 = time.perf_counter()
        try:
            res = self.generator.run(items, self.engine, self.sampling)
        except BaseException:
            self.generator.restore(before)
            self._before_last = None
            raise
        self._before_last = before
        res.seconds = time.perf_counter() - t0
        return res

    def discard_last(self) -> None:
        """Undo the latest ``generate`` (a batch made ahead that the run turned out not to need)."""
        if self._before_last is not None:
            self.generator.restore(self._before_last)
            self._before_last = None

    def apply(self, step: str, records: list[Record]) -> StageResult:
        """The recipe's filters of one step, in recipe order. A step that changes a field the
        generator builds its messages from has the messages rebuilt (one owner per column: the
        verifier sets the field, the generator renders the conversation)."""
        t0 = time.perf_counter()
        out = StageResult(kept=list(records))
        changed: set[str] = set()
        for f in self.filters[step]:
            if not out.kept:
                break
            res = f(out.kept)
            out.rejects.extend(res.rejects)
            out.kept = res.kept
            changed |= set(f.writes)
        if changed & self.generator.message_fields:
            for r in out.kept:
                r.messages = self.generator.messages(r.fields)
        out.seconds = time.perf_counter() - t0
        return out

    def revise(self, checked: list[StageResult], rnd: int) -> StageResult:
        """One CoachLM revision round over the rejects (the fixable ones) of a pass's steps."""
        t0 = time.perf_counter()
        rejects = [j for res in checked for j in res.rejects]
        out = revising.revise(
            self.generator, self.engine, self.sampling, rejects, rnd, self.spec.recipe.revise
        )
        out.seconds = time.perf_counter() - t0
        return out

    def admit(self, records: list[Record]) -> StageResult:
        """Rows the accept step kept enter the dedup indexes; a row that duplicates one admitted
        before it (in this batch or earlier) is a dedup reject now."""
        out = StageResult(kept=list(records))
        for f in self.filters["dedup"]:
            res = f.admit(out.kept)
            out.rejects.extend(res.rejects)
            out.kept = res.kept
        return out

    def check_shardable(self) -> None:
        gen = self.generator
        if not gen.shardable:
            raise UserError(
                f"--shards: generator {gen.name} makes each batch from the rows of earlier batches; "
                "run it without --shards"
            )
        for fs in self.filters.values():
            for f in fs:
                if not getattr(f, "shardable", True):
                    raise UserError(
                        f"--shards: filter {f.name} compares each row with every row kept before it; "
                        "run this recipe without --shards"
                    )

    def filter_summaries(self) -> dict[str, Any]:
        return {f.name: f.summary() for fs in self.filters.values() for f in fs if f.summary()}

    def card_extra(self, accepted: list[Record] | None = None) -> str:
        doc = getattr(self.generator, "card_section", None)
        parts = [doc()] if callable(doc) else []
        for f in (f for fs in self.filters.values() for f in fs):
            section = getattr(f, "card_section", None)
            if callable(section):
                parts.append(section(accepted or []))
        return "\n".join(p for p in parts if p)

    def close(self) -> None:
        for fs in self.filters.values():
            for f in fs:
                f.close()
        self.engines.close()


_STAGES: dict[str, Stages] = {}
_RELEASED: set[str] = set()


def stages_for(spec: RunSpec) -> Stages:
    """This process's stages of a run, built on first use (a small cached factory)."""
    st = _STAGES.get(spec.run_id)
    if st is None:
        if spec.run_id in _RELEASED:  # e.g. a retry that fires after its run was closed
            raise RuntimeError(f"run {spec.run_id} is closed in this process")
        st = _STAGES[spec.run_id] = Stages(spec)
    return st


def keep_stages(spec: RunSpec, st: Stages) -> None:
    """Stages built by the flow process itself (``Run.open``) serve its tasks."""
    _STAGES[spec.run_id] = st


def release_stages(spec: RunSpec) -> None:
    _RELEASED.add(spec.run_id)
    st = _STAGES.pop(spec.run_id, None)
    if st is not None:
        st.close()
