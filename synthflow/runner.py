"""One run of a recipe, as plain Python: plan batches, generate, filter by stage, publish.

``flows/`` wires these methods into Prefect tasks; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthflow import registry, runlock
from synthflow import revise as revising
from synthflow.engines.base import Sampling
from synthflow.engines.cache import CachedEngine
from synthflow.engines.pool import EnginePool
from synthflow.errors import UserError
from synthflow.filtering import FilterContext
from synthflow.generators.base import Generator, Item
from synthflow.personas import diversity
from synthflow.recipe import Recipe, load_recipe
from synthflow.record import Record, Reject, StageResult
from synthflow.scoring import ScoreContext, ScoreStage, build_scorers
from synthflow.seeds import extract_seeds
from synthflow.store import RunWriter, completed_runs

# The data's way, in order. Each filter reports under one of these buckets.
BUCKETS = ("verify", "dedup", "score", "accept")
FUNNEL = ("seeds", "generated", "parsed", "verified", "deduped", "scored", "accepted")
_BUCKET_COUNT = {"verify": "verified", "dedup": "deduped", "score": "scored", "accept": "accepted"}


@dataclass
class Overrides:
    n: int | None = None
    model: str | None = None
    out: str | None = None
    engine: str | None = None
    base_url: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    max_items: int | None = None
    sets: list[str] | None = None  # "a.b.c=VALUE" (VALUE parsed as YAML)

    def as_recipe_keys(self) -> dict[str, Any]:
        import yaml

        extra: dict[str, Any] = {}
        for kv in self.sets or []:
            key, sep, val = kv.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--set {kv!r}: use KEY=VALUE, e.g. generator.options.self_consistency=4")
            try:
                extra[key.strip()] = yaml.safe_load(val)
            except yaml.YAMLError:
                raise UserError(f"--set {kv!r}: the value is not valid YAML") from None
        return {
            "n": self.n,
            "engine.model": self.model,
            "output.root": self.out,
            "engine.name": self.engine,
            "engine.base_url": self.base_url,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "max_items": self.max_items,
            **extra,
        }


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


@dataclass(frozen=True)
class RunSpec:
    """Everything a process needs to rebuild a run's stages: picklable, built once by the flow.
    The recipe is the validated model (not re-read from disk), ``item_start`` the first item index
    of the range this run reserved."""

    recipe: Recipe
    recipe_path: str
    run_id: str
    fingerprint: str
    item_start: int = 0
    resumed: bool = False
    dask: str | None = None  # --dask: the verify step's sandboxes run on this Dask cluster


def build_filters(
    recipe: Recipe, recipe_path: str, ctx: FilterContext, score_stage: ScoreStage
) -> dict[str, list[Any]]:
    filters: dict[str, list[Any]] = {b: [] for b in BUCKETS}
    filters["score"].append(score_stage)
    try:
        for i, fc in enumerate(recipe.filters):
            cls_ = registry.get("filter", fc.name, f"field filters[{i}].name")
            params = cls_.validate_params(fc.params, f"{recipe_path}: field filters[{i}]")
            f = cls_(params, ctx)
            filters[f.bucket].append(f)
        if not any(fc.name == "sft" for fc in recipe.filters):  # every run checks SFT fit, last
            from filters.sft import SFTCheck, SFTParams

            o = recipe.output
            filters["accept"].append(
                SFTCheck(SFTParams(tokenizer=o.target_tokenizer, max_seq_len=o.max_seq_len), ctx)
            )
    except BaseException:
        for fs in filters.values():
            for f in fs:
                f.close()
        raise
    return filters


class Stages:
    """A run's working parts (generator, engines by role, filters, writer), built from a
    :class:`RunSpec` in whichever process runs a stage. Each method takes a batch and returns a
    :class:`StageResult`; nothing here counts: the flow's :class:`Run` keeps the ledger."""

    def __init__(self, spec: RunSpec):
        recipe, where = spec.recipe, spec.recipe_path
        self.spec = spec
        self.seeds = extract_seeds(recipe.seeds, where)
        self.generator = registry.get("generator", recipe.generator.name)(recipe, self.seeds)
        self.generator.run_id = spec.run_id  # row ids are unique per run and stable when it resumes
        self.engines = EnginePool()
        try:
            self.engine, score_stage = open_engines(recipe, where, self.engines)
            bind = getattr(self.generator, "bind_engines", None)
            if bind is not None:  # generators with engines of their own (Ensemble-Instruct's members)
                bind(self.engines, where)
            ctx = FilterContext(
                recipe=recipe,
                generator=self.generator,
                out_root=Path(recipe.output.root),
                run_id=spec.run_id,
                dask=spec.dask,
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

    def apply(self, bucket: str, records: list[Record]) -> StageResult:
        """The recipe's filters of one bucket, in recipe order."""
        t0 = time.perf_counter()
        out = StageResult(kept=list(records))
        for f in self.filters[bucket]:
            if not out.kept:
                break
            res = f(out.kept)
            out.rejects.extend(res.rejects)
            out.kept = res.kept
        if bucket == "verify":
            for r in out.kept:
                self.generator.refresh(r)
        out.seconds = time.perf_counter() - t0
        return out

    def revise(self, rejects: list[Reject], rnd: int) -> StageResult:
        """One CoachLM revision round over a batch's rejects (the fixable ones)."""
        t0 = time.perf_counter()
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

    def filter_summaries(self) -> dict[str, Any]:
        return {f.name: f.summary() for fs in self.filters.values() for f in fs if f.summary()}

    def publish(self, run: Run) -> Path:
        """Write the run's rows and rejects, publish atomically, then persist the dedup indexes."""
        for fs in self.filters.values():
            for f in fs:
                f.finalize(run.accepted)
        summary = run.summary(self)
        self.writer.add(run.accepted, run.rejects)
        path = self.writer.finalize(
            summary, self.generator.artifacts(), card_extra=self.card_extra(run.accepted)
        )
        accepted = {r.id for r in run.accepted}
        for fs in self.filters.values():
            for f in fs:
                f.commit(accepted)
        run.summary_final = {**summary, "path": str(path)}
        write_run_report(path)
        return path

    def card_extra(self, accepted: list[Record] | None = None) -> str:
        doc = getattr(self.generator, "card_section", None)
        parts = [doc()] if callable(doc) else []
        for f in self.filters["accept"]:
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


def release_stages(spec: RunSpec) -> None:
    _RELEASED.add(spec.run_id)
    st = _STAGES.pop(spec.run_id, None)
    if st is not None:
        st.close()


class Run:
    """One run as the flow sees it: the picklable spec, and the ledger (counts, seconds, accepted
    rows, rejects, the items planned). Only the flow process changes it; stages return
    :class:`StageResult`s and the ``add_*`` methods do the accounting. ``stages`` are this
    process's working parts, built lazily."""

    def __init__(self, spec: RunSpec, lock: Any = None):
        self.spec = spec
        self.planned = 0  # items planned by this run
        self.discarded = 0  # items made ahead and discarded (the run reached n first)
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self.accepted: list[Record] = []
        self.rejects: list[Reject] = []
        self.started = time.time()
        self.summary_final: dict[str, Any] | None = None
        self.shard_reports: list[dict[str, Any]] = []  # a sharded run: what each shard did
        self.revision_tried: Counter = Counter()  # revisions asked for, per reason head
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
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def stages(self) -> Stages:
        return stages_for(self.spec)

    # ---- opening ------------------------------------------------------------------------------
    @staticmethod
    def check(recipe_path: str, overrides: Overrides | None = None, shards: int = 1) -> Recipe:
        """Validate recipe, seeds, generator, filters and engine reachability; no side effects."""
        recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
        spec = RunSpec(recipe, str(recipe_path), run_id="check", fingerprint=recipe.fingerprint())
        st = Stages(spec)
        try:
            if shards > 1:
                from synthflow.shard import check_shardable

                check_shardable(st)
        finally:
            st.close()
        return recipe

    @classmethod
    def open(
        cls,
        recipe_path: str,
        overrides: Overrides | None = None,
        run_id: str | None = None,
        dask: str | None = None,
    ) -> Run:
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
        _STAGES[rid] = stages
        run = cls(spec, lock)
        run.counts["seeds"] = len(stages.seeds)
        return run

    # ---- the loop -----------------------------------------------------------------------------
    def reached_target(self) -> bool:
        return len(self.accepted) >= self.recipe.n

    def done(self) -> bool:
        return self.reached_target() or self.planned >= self.recipe.budget

    def next_items(self) -> list[Item]:
        """The next batch's items (none when the run is done), counted as planned."""
        if self.done():
            return []
        count = min(self.recipe.batch_size, self.recipe.budget - self.planned)
        items = self.stages.generator.plan(self.spec.item_start + self.planned, count)
        self.planned += count
        return items

    def unplan(self, items: list[Item]) -> None:
        """Items made ahead that the run did not need: the next run draws them again."""
        self.planned -= len(items)
        self.discarded += len(items)

    def add_generated(self, res: StageResult) -> list[Record]:
        # every generator reject is a parse or generate reject of a generated row
        self.seconds["generate"] += res.seconds
        self.counts["generated"] += len(res.kept) + len(res.rejects)
        self.counts["parsed"] += len(res.kept)
        self.rejects.extend(res.rejects)
        return res.kept

    def add_revised(self, res: StageResult) -> list[Record]:
        """A revision round: each revision is a generated row of its own (data or a reject)."""
        self.seconds["revise"] += res.seconds
        for r in [*res.kept, *(j.record for j in res.rejects)]:
            self.revision_tried[revising.head(r.fields["revision_reason"])] += 1
        return self.add_generated(StageResult(kept=res.kept, rejects=res.rejects))

    def add_stage(self, bucket: str, res: StageResult) -> list[Record]:
        self.seconds[bucket] += res.seconds
        self.counts[_BUCKET_COUNT[bucket]] += len(res.kept)
        self.rejects.extend(res.rejects)
        return res.kept

    def add_admitted(self, res: StageResult) -> None:
        """Rows admitted into the dedup indexes: keep up to ``n``; rows past the target are rejects
        (``accept``, ``over_target``). Dedup rejects at admit time did not survive dedup after all."""
        self.rejects.extend(res.rejects)
        for key in ("deduped", "scored", "accepted"):
            self.counts[key] -= len(res.rejects)
        room = max(0, self.recipe.n - len(self.accepted))
        self.accepted.extend(res.kept[:room])
        extra = res.kept[room:]
        if extra:
            self.counts["over_target"] += len(extra)
            self.rejects.extend(Reject(r, "accept", "over_target") for r in extra)

    def progress(self) -> tuple[float, str]:
        """Percent done (accepted of n) and one line a person can read during a long run."""
        acc, n = len(self.accepted), self.recipe.n
        gen = self.counts.get("generated", 0)
        elapsed = time.time() - self.started
        line = f"accepted {acc} of {n}; planned {self.planned} of {self.recipe.budget} items"
        if gen:
            line += f"; yield {acc / gen:.1%} of {gen} generated"
        if acc and acc < n:
            line += f"; ETA ~{elapsed / acc * (n - acc):.0f} s at this yield"
        elif not acc and self.planned:
            line += f"; at most ~{elapsed / self.planned * (self.recipe.budget - self.planned):.0f} s left (budget)"
        return min(100.0, 100.0 * acc / n), line

    # in-process conveniences (tests, benches): a stage call plus its accounting
    def prepare(self) -> None:
        self.seconds["prepare"] += self.stages.prepare()

    def generate(self, items: list[Item]) -> StageResult:
        res = self.stages.generate(items)
        self.add_generated(res)
        return res

    def apply(self, bucket: str, records: list[Record]) -> list[Record]:
        return self.add_stage(bucket, self.stages.apply(bucket, records))

    def accept(self, records: list[Record]) -> None:
        self.add_admitted(self.stages.admit(records))

    # ---- finishing ----------------------------------------------------------------------------
    def summary(self, stages: Stages | None = None) -> dict[str, Any]:
        st = stages or self.stages
        counts = {k: self.counts.get(k, 0) for k in FUNNEL}
        counts["accepted"] = len(self.accepted)
        reasons = Counter((j.stage, _reason_head(j.reason)) for j in self.rejects)
        e = st.engine
        gen_s = self.seconds.get("generate", 0.0)
        wall = time.time() - self.started
        pool = st.engines
        ready = (pool.ready_at - self.started) if pool.ready_at is not None else None
        hits, misses = e.hits, e.misses
        prompt_tok, completion_tok, engine_s = e.prompt_tokens, e.completion_tokens, e.engine_seconds
        for g in st.generator.generation_engines():  # e.g. ensemble members: their own roles
            if g is not e:
                hits, misses = hits + g.hits, misses + g.misses
                prompt_tok, completion_tok = (
                    prompt_tok + g.prompt_tokens,
                    completion_tok + g.completion_tokens,
                )
                engine_s += g.engine_seconds
        for s in self.shard_reports:  # a sharded run: the shards' engines did the work
            hits += s["cache"]["hits"]
            misses += s["cache"]["misses"]
            prompt_tok += s["tokens"]["prompt"]
            completion_tok += s["tokens"]["completion"]
            engine_s += s["engine_seconds"]
        out = {
            "recipe": self.recipe.name,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "resumed": self.spec.resumed,
            "engine": e.name,
            "model": e.model_id,
            "counts": counts,
            "items_planned": self.planned,
            "item_offset": self.spec.item_start,
            "items_discarded": self.discarded,
            "over_target": self.counts.get("over_target", 0),
            "top_rejects": [(s, r, c) for (s, r), c in reasons.most_common(8)],
            "rejects_by_stage": dict(Counter(j.stage for j in self.rejects)),
            "cache": {"hits": hits, "misses": misses},
            "tokens": {"prompt": prompt_tok, "completion": completion_tok},
            "engine_seconds": round(engine_s, 2),
            "output_tokens_per_s": round(completion_tok / engine_s, 1) if engine_s else None,
            "stage_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "generate_seconds": round(gen_s, 2),
            "wall_seconds": round(wall, 1),
            "pipeline": self.recipe.pipeline,
            "timing": {
                "wall_s": round(wall, 2),
                "engine_ready_s": round(ready, 2) if ready is not None else None,
                "engine_busy_s": round(pool.busy_s, 2),
            },
            "generator": st.generator.summary(self.accepted),
            "diversity": self.diversity(st),
            "revision": revising.summary(
                self.accepted, self.revision_tried, self.recipe.revise.rounds, self.rejects
            )
            if self.recipe.revise
            else None,
            "filters": st.filter_summaries(),
            "roles": pool.usage(),
            "scores": score_stats(self.accepted, self.rejects, st.writer.score_names),
        }
        if self.shard_reports:
            out["shards"] = self.shard_reports
        return out

    def diversity(self, st: Stages) -> dict[str, Any]:
        """Distinct-n of the generator's text field: over accepted rows, and over every row that got
        past parsing (on one budget, the figure to compare runs with and without personas)."""
        field = st.generator.text_field
        parsed = [r for r in self.accepted] + [j.record for j in self.rejects if j.stage != "parse"]
        out = {
            "field": field,
            "accepted": diversity([r.text_for(field) for r in self.accepted]),
            "parsed": diversity([t for r in parsed if (t := r.text_for(field).strip())]),
        }
        if st.generator.personas:
            out["distinct_personas"] = len({r.fields.get("persona") for r in self.accepted} - {None})
        return out

    def finish(self) -> tuple[Path, dict[str, Any]]:
        """Publish (in this process), then end the claim: the resume marker and the lock go."""
        path = self.stages.publish(self)
        runlock.finish_run(
            Path(self.recipe.output.root), self.recipe.name, self.fingerprint, self.run_id, self.planned
        )
        assert self.summary_final is not None
        return path, self.summary_final

    def close(self) -> None:
        release_stages(self.spec)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def write_run_report(run_dir: Path) -> Path | None:
    """``report.html`` beside the card. The data is published already: a report that fails is a
    warning, never a lost run."""
    import sys

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


def score_stats(
    accepted: list[Record], rejects: list[Reject], declared: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Each score over the rows that reached scoring (accepted, and rejected at accept time):
    min / median / max, nulls, the accepted rows' median, and how many rows thresholds removed."""
    rows = [r.scores for r in accepted] + [j.record.scores for j in rejects if j.stage == "accept"]
    removed = Counter(
        j.reason.split(":", 1)[1].split("<")[0].split(">")[0]
        for j in rejects
        if j.stage == "accept" and j.reason.startswith("quality:")
    )
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({k for s in rows for k in s} | set(declared or [])):
        vals = [v for s in rows if (v := s.get(name)) is not None and v == v]
        acc = [v for r in accepted if (v := r.scores.get(name)) is not None and v == v]
        d: dict[str, Any] = {
            "scored": len(vals),
            "null": len(rows) - len(vals),
            "removed": removed.get(name, 0),
        }
        if vals:
            d.update(
                min=round(min(vals), 4), median=round(statistics.median(vals), 4), max=round(max(vals), 4)
            )
        if acc:
            d["accepted_median"] = round(statistics.median(acc), 4)
        out[name] = d
    return out


def _reason_head(reason: str) -> str:
    """Group reasons that name a specific row (``dedup:near:<id>:...``) under their kind."""
    parts = reason.split(":")
    if parts[0] in ("dedup", "contaminated") and len(parts) > 2:
        return ":".join(parts[:2])
    return reason.split(" (")[0]


def format_summary(s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [
        f"run {s['run_id']} of recipe {s['recipe']}" + (" (resumed)" if s.get("resumed") else ""),
        f"  dataset: {s.get('path', '?')}",
        f"  engine: {s['engine']}  model: {s['model']}",
        "  funnel: " + " -> ".join(f"{k} {c[k]}" for k in FUNNEL),
        f"  cache: {s['cache']['hits']} hits, {s['cache']['misses']} generated; "
        f"tokens: {s['tokens']['prompt']} prompt, {s['tokens']['completion']} completion; "
        f"engine {s['engine_seconds']} s"
        + (f" ({s['output_tokens_per_s']} output tok/s)" if s.get("output_tokens_per_s") else ""),
    ]
    if s["top_rejects"]:
        lines.append("  top reject reasons:")
        lines += [f"    {n:6d}  {st:8s} {r}" for st, r, n in s["top_rejects"]]
    v = (s.get("filters") or {}).get("verify")
    if v:
        weak = "  WEAK SANDBOX (allow_weak)" if v.get("weak_sandbox") else ""
        lines.append(
            f"  verification: {v['kind']} in {v['sandbox']} (seccomp {'on' if v.get('seccomp') else 'off'}); "
            f"verdicts trusted {v.get('verdicts_trusted', 0)}, untrusted {v.get('verdicts_untrusted', 0)}{weak}"
        )
    for role, u in (s.get("roles") or {}).items():
        if role != "generator":
            lines.append(
                f"  {role}: {u['engine']} {u['model']}: {u['misses']} calls, {u['hits']} cached; "
                f"tokens {u['prompt_tokens']} prompt, {u['completion_tokens']} completion; {u['engine_seconds']} s"
            )
    if s.get("scores"):
        lines.append(
            "  scores (min / median / max over scored rows; accepted median; removed by thresholds):"
        )
        for name, d in s["scores"].items():
            if "median" not in d:
                lines.append(f"    {name:16s} no value ({d['null']} rows scored)")
                continue
            null = f", {d['null']} null" if d["null"] else ""
            lines.append(
                f"    {name:16s} {d['min']:g} / {d['median']:g} / {d['max']:g}; "
                f"accepted {d.get('accepted_median', float('nan')):g}; removed {d['removed']}{null}"
            )
    for k, v in (s.get("generator") or {}).items():
        if not isinstance(v, (dict, list)):  # full tables stay in summary.json
            lines.append(f"  {k}: {v}")
    rv = s.get("revision")
    if rv:
        per = ", ".join(f"{k} {v}" for k, v in sorted(rv["rescued"].items())) or "none"
        late = sum((rv.get("passed_over_target") or {}).values())
        lines.append(
            f"  revision: {sum(rv['tried'].values())} tried, {rv['rescued_rows']} rescued ({per})"
            + (f"; {late} more passed every check after the target was reached" if late else "")
        )
    dv = s.get("diversity") or {}
    if (dv.get("parsed") or {}).get("rows"):
        p = dv["parsed"]
        lines.append(
            f"  diversity of {dv['field']} over {p['rows']} parsed rows: distinct-1/2/3 "
            f"{p['distinct_1']} / {p['distinct_2']} / {p['distinct_3']}"
            + (
                f"; {dv['distinct_personas']} personas among accepted rows"
                if "distinct_personas" in dv
                else ""
            )
        )
    t = s.get("timing") or {}
    if t.get("engine_ready_s") is not None:
        after = t["wall_s"] - t["engine_ready_s"]
        share = t["engine_busy_s"] / after if after > 0 else 0.0
        lines.append(
            f"  engine busy {t['engine_busy_s']:g} s of the {after:.1f} s after it was ready "
            f"(ready at {t['engine_ready_s']:g} s): {share:.0%}"
            f"; pipeline {'on' if s.get('pipeline') else 'off'}"
            + (f", {s['items_discarded']} items made ahead and discarded" if s.get("items_discarded") else "")
        )
    for sh in s.get("shards") or []:
        lines.append(
            f"  shard {sh['shard']} on {sh['host']}: {len(sh['batches'])} batches, "
            f"{sh['cache']['misses']} generated, {sh['cache']['hits']} cached, engine {sh['engine_seconds']} s"
        )
    lines.append(f"  wall time: {s['wall_seconds']} s")
    return "\n".join(lines)
