"""One run of a recipe, as plain Python: plan batches, generate, filter by stage, publish.

``flows/`` wires these methods into Prefect tasks; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthflow import registry
from synthflow.atomic import atomic_path
from synthflow.engines.base import Sampling
from synthflow.engines.cache import CachedEngine, ResponseCache
from synthflow.filtering import FilterContext
from synthflow.generators.base import Item
from synthflow.model import cache_home
from synthflow.recipe import Recipe, load_recipe
from synthflow.record import Record, Reject, StageResult
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

    def as_recipe_keys(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "engine.model": self.model,
            "output.root": self.out,
            "engine.name": self.engine,
            "engine.base_url": self.base_url,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "max_items": self.max_items,
        }


def response_cache_path() -> Path:
    env = os.environ.get("SYNTHFLOW_RESPONSE_CACHE")
    return Path(env) if env else cache_home() / "responses.sqlite3"


def build_engine(recipe: Recipe) -> Any:
    factory = registry.get("engine", recipe.engine.name, "field engine.name")
    return factory(recipe.engine)


class Run:
    """State of one run. A plain class (not a dataclass) so Prefect treats it as one opaque value."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_path: str,
        seeds: list[Any],
        generator: Any,
        engine: CachedEngine,
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
        self.engine = engine
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
        build_engine(recipe).preflight()
        return recipe

    @classmethod
    def open(cls, recipe_path: str, overrides: Overrides | None = None, run_id: str | None = None) -> Run:
        """Validate everything a run needs before any work starts (bad input fails here, exit 2)."""
        recipe = load_recipe(recipe_path, (overrides or Overrides()).as_recipe_keys())
        seeds = extract_seeds(recipe.seeds, str(recipe_path))
        gen_cls = registry.get("generator", recipe.generator.name)
        generator = gen_cls(recipe, seeds)
        engine = build_engine(recipe)
        engine.preflight()  # e.g. a down endpoint is a user error before anything runs
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
        for i, fc in enumerate(recipe.filters):
            cls_ = registry.get("filter", fc.name, f"field filters[{i}].name")
            params = cls_.validate_params(fc.params, f"{recipe_path}: field filters[{i}]")
            f = cls_(params, ctx)
            bucket = "dedup" if f.stage == "decontam" else f.stage
            filters[bucket].append(f)
        cached = CachedEngine(engine, ResponseCache(response_cache_path()))
        writer = RunWriter(root, recipe, run_id, generator.columns)
        run = cls(recipe, str(recipe_path), seeds, generator, cached, filters, writer, run_id, fp, resumed)
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
        res = self.generator.generate(items, self.engine, self.sampling)
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
        """Keep up to ``n`` rows; rows past the target are rejects (``accept``, ``over_target``)."""
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
        }

    def finish(self) -> tuple[Path, dict[str, Any]]:
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
        self.engine.close()
        self.engine.cache.close()


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
    for k, v in (s.get("generator") or {}).items():
        if not isinstance(v, (dict, list)):  # full tables stay in summary.json
            lines.append(f"  {k}: {v}")
    lines.append(f"  wall time: {s['wall_seconds']} s")
    return "\n".join(lines)
