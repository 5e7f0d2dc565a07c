"""One run of a recipe, as plain Python: plan batches, generate, filter by stage, publish.

``flows/`` wires these methods into Prefect tasks; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthflow import registry
from synthflow.atomic import atomic_path
from synthflow.engines.base import Sampling
from synthflow.engines.cache import CachedEngine
from synthflow.engines.pool import EnginePool
from synthflow.errors import UserError
from synthflow.filtering import FilterContext
from synthflow.generators.base import Item
from synthflow.recipe import Recipe, load_recipe
from synthflow.record import Record, Reject, StageResult
from synthflow.scoring import ScoreContext, ScoreStage, build_scorers
from synthflow.seeds import extract_seeds
from synthflow.store import STAGING, RunWriter, completed_runs

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


class Run:
    """State of one run. A plain class (not a dataclass) so Prefect treats it as one opaque value."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_path: str,
        seeds: list[Any],
        generator: Any,
        engines: EnginePool,
        filters: dict[str, list[Any]],
        writer: RunWriter,
        run_id: str,
        fingerprint: str,
        resumed: bool = False,
    ):
        self.recipe = recipe
        self.recipe_path = recipe_path
        self.seeds = seeds
        self.generator = generator
        self.engines = engines
        self.engine = engines.roles["generator"]
        self.filters = filters
        self.writer = writer
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.resumed = resumed
        self.offset = 0  # first item index: items earlier runs of this recipe already drew
        self.planned = 0  # items planned by this run
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self.accepted: list[Record] = []
        self.rejects: list[Reject] = []
        self.started = time.time()

    # ---- opening ------------------------------------------------------------------------------
    @staticmethod
    def check(recipe_path: str, overrides: Overrides | None = None) -> Recipe:
        """Validate recipe, seeds, generator, filters and engine reachability; no side effects."""
        recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
        seeds = extract_seeds(recipe.seeds, str(recipe_path))
        registry.get("generator", recipe.generator.name)(recipe, seeds)
        pool = EnginePool()
        try:
            _, stage = open_engines(recipe, str(recipe_path), pool)
            stage.close()
        finally:
            pool.close()
        return recipe

    @classmethod
    def open(cls, recipe_path: str, overrides: Overrides | None = None, run_id: str | None = None) -> Run:
        """Validate everything a run needs before any work starts (bad input fails here, exit 2)."""
        recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
        seeds = extract_seeds(recipe.seeds, str(recipe_path))
        gen_cls = registry.get("generator", recipe.generator.name)
        generator = gen_cls(recipe, seeds)
        pool = EnginePool()
        _, score_stage = open_engines(recipe, str(recipe_path), pool)
        root = Path(recipe.output.root)
        fp = recipe.fingerprint()
        marker = root / STAGING / f"{recipe.name}--{fp}.json"
        resumed = False
        if run_id is None and marker.is_file():
            run_id, resumed = json.loads(marker.read_text())["run_id"], True
        if run_id is None:
            run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{fp[:6]}"
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({"run_id": run_id, "recipe": str(recipe_path)}))
        generator.run_id = run_id  # row ids are unique per run and stable when a run resumes
        ctx = FilterContext(recipe=recipe, generator=generator, out_root=root, run_id=run_id)
        filters: dict[str, list[Any]] = {b: [] for b in BUCKETS}
        filters["score"].append(score_stage)
        for i, fc in enumerate(recipe.filters):
            cls_ = registry.get("filter", fc.name, f"field filters[{i}].name")
            params = cls_.validate_params(fc.params, f"{recipe_path}: field filters[{i}]")
            f = cls_(params, ctx)
            bucket = "dedup" if f.stage == "decontam" else f.stage
            filters[bucket].append(f)
        columns = dict(generator.columns)
        for fs in filters.values():
            for f in fs:
                columns.update(f.columns)
        writer = RunWriter(root, recipe, run_id, columns, score_stage.outputs)
        run = cls(recipe, str(recipe_path), seeds, generator, pool, filters, writer, run_id, fp, resumed)
        run.counts["seeds"] = len(seeds)
        # a later run of the same recipe continues the sample stream instead of redrawing it
        run.offset = previous_items(root, recipe.name, fp)
        return run

    @property
    def sampling(self) -> Sampling:
        s = self.recipe.sampling
        return Sampling(s.temperature, s.top_p, s.max_tokens, self.recipe.engine.seed, tuple(s.stop))

    # ---- the loop -----------------------------------------------------------------------------
    def done(self) -> bool:
        return len(self.accepted) >= self.recipe.n or self.planned >= self.recipe.budget

    def next_batch(self) -> list[Item]:
        if self.done():
            return []
        count = min(self.recipe.batch_size, self.recipe.budget - self.planned)
        items = self.generator.plan(self.offset + self.planned, count)
        self.planned += count
        return items

    def prepare(self) -> None:
        """Generator set-up that needs the engine (runs once, before the first batch)."""
        t0 = time.perf_counter()
        self.generator.prepare(self.engine, self.sampling)
        self.seconds["prepare"] += time.perf_counter() - t0

    def generate(self, items: list[Item]) -> StageResult:
        t0 = time.perf_counter()
        res = self.generator.run(items, self.engine, self.sampling)
        self.seconds["generate"] += time.perf_counter() - t0
        # every generator reject is a parse or generate reject of a generated row
        self.counts["generated"] += len(res.kept) + len(res.rejects)
        self.counts["parsed"] += len(res.kept)
        self.rejects.extend(res.rejects)
        return res

    def apply(self, bucket: str, records: list[Record]) -> list[Record]:
        """Run the recipe's filters of one bucket, in recipe order; count what survives."""
        t0 = time.perf_counter()
        for f in self.filters[bucket]:
            if not records:
                break
            res = f(records)
            self.rejects.extend(res.rejects)
            records = res.kept
        if bucket == "verify":
            for r in records:
                self.generator.refresh(r)
        self.seconds[bucket] += time.perf_counter() - t0
        self.counts[_BUCKET_COUNT[bucket]] += len(records)
        return records

    def accept(self, records: list[Record]) -> None:
        """Admit the rows the accept step kept into the dedup indexes (a row that duplicates one
        admitted before it is a dedup reject now), then keep up to ``n``; rows past the target are
        rejects (``accept``, ``over_target``)."""
        for f in self.filters["dedup"]:
            res = f.admit(records)
            self.rejects.extend(res.rejects)
            for key in ("deduped", "scored"):  # they did not survive dedup after all
                self.counts[key] -= len(res.rejects)
            records = res.kept
        room = max(0, self.recipe.n - len(self.accepted))
        self.accepted.extend(records[:room])
        extra = records[room:]
        if extra:
            self.counts["over_target"] += len(extra)
            self.rejects.extend(Reject(r, "accept", "over_target") for r in extra)

    # ---- finishing ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        counts = {k: self.counts.get(k, 0) for k in FUNNEL}
        counts["accepted"] = len(self.accepted)
        reasons = Counter((j.stage, _reason_head(j.reason)) for j in self.rejects)
        e = self.engine
        gen_s = self.seconds.get("generate", 0.0)
        return {
            "recipe": self.recipe.name,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "resumed": self.resumed,
            "engine": e.name,
            "model": e.model_id,
            "counts": counts,
            "items_planned": self.planned,
            "item_offset": self.offset,
            "over_target": self.counts.get("over_target", 0),
            "top_rejects": [(s, r, c) for (s, r), c in reasons.most_common(8)],
            "rejects_by_stage": dict(Counter(j.stage for j in self.rejects)),
            "cache": {"hits": e.hits, "misses": e.misses},
            "tokens": {"prompt": e.prompt_tokens, "completion": e.completion_tokens},
            "engine_seconds": round(e.engine_seconds, 2),
            "output_tokens_per_s": round(e.completion_tokens / e.engine_seconds, 1)
            if e.engine_seconds
            else None,
            "stage_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "generate_seconds": round(gen_s, 2),
            "wall_seconds": round(time.time() - self.started, 1),
            "generator": self.generator.summary(self.accepted),
            "filters": {f.name: f.summary() for fs in self.filters.values() for f in fs if f.summary()},
            "roles": self.engines.usage(),
            "scores": score_stats(self.accepted, self.rejects, self.writer.score_names),
        }

    def finish(self) -> tuple[Path, dict[str, Any]]:
        for fs in self.filters.values():
            for f in fs:
                f.finalize(self.accepted)
        summary = self.summary()
        self.writer.add(self.accepted, self.rejects)
        path = self.writer.finalize(summary, self.generator.artifacts(), card_extra=self.card_extra())
        accepted = {r.id for r in self.accepted}
        for fs in self.filters.values():
            for f in fs:
                f.commit(accepted)
        marker = Path(self.recipe.output.root) / STAGING / f"{self.recipe.name}--{self.fingerprint}.json"
        marker.unlink(missing_ok=True)
        summary["path"] = str(path)
        return path, summary

    def card_extra(self) -> str:
        doc = getattr(self.generator, "card_section", None)
        return doc() if callable(doc) else ""

    def close(self) -> None:
        for fs in self.filters.values():
            for f in fs:
                f.close()
        self.engines.close()


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
    lines.append(f"  wall time: {s['wall_seconds']} s")
    return "\n".join(lines)
