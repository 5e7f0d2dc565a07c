"""Engines by role: ``generator``, ``judge``, ``scorer_model``, ...

Each role gets its own :class:`CachedEngine` (the same response cache, its own token accounting), so
judge tokens never count as generation. Roles whose configs name the same engine and model share one
engine instance: one in-process vLLM serves the generator and the IFD scorer of a default run.
Engines are built lazily and start on their first call.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthflow import registry
from synthflow.engines.cache import CachedEngine, ResponseCache
from synthflow.model import DEFAULT_MODEL_NAME, cache_home


def response_cache_path() -> Path:
    env = os.environ.get("SYNTHFLOW_RESPONSE_CACHE")
    return Path(env) if env else cache_home() / "responses.sqlite3"


def build_engine(cfg: Any, where: str = "field engine.name") -> Any:
    """An engine (not started) from an ``EngineConfig``."""
    factory = registry.get("engine", cfg.name, where)
    return factory(cfg)


def engine_identity(cfg: Any) -> tuple[Any, ...]:
    """Configs with the same identity share one engine instance."""
    model = cfg.model
    if cfg.name == "vllm" and model in ("", "default", DEFAULT_MODEL_NAME):
        model = "default"
    return (cfg.name, model, cfg.base_url, json.dumps(cfg.options, sort_keys=True, default=str))


# engines provided from outside (a test session's one vLLM engine), by identity: every pool in this
# process uses them instead of building its own, and never closes them (their provider does)
_PROVIDED: dict[tuple[Any, ...], Any] = {}


@contextlib.contextmanager
def provide(cfg: Any, engine: Any) -> Iterator[Any]:
    """Within the block, every pool of this process that needs an engine with ``cfg``'s identity
    gets ``engine`` (started once, closed by the caller). Tests share one real engine this way."""
    key = engine_identity(cfg)
    _PROVIDED[key] = engine
    try:
        yield engine
    finally:
        _PROVIDED.pop(key, None)


class EnginePool:
    """Also the engines' guard: one lock per engine instance (a batch call at a time, so a scorer's
    call from another thread waits instead of entering vLLM concurrently), and the timing of the
    run's engine use: when the first engine was ready, and the seconds during which at least one
    engine call was in flight."""

    def __init__(self, cache: ResponseCache | None = None):
        self._cache = cache
        self._instances: dict[tuple[Any, ...], Any] = {}
        self.roles: dict[str, CachedEngine] = {}
        self._locks: dict[int, threading.RLock] = {}
        self._timing = threading.Lock()
        self._inflight = 0
        self._busy_since = 0.0
        self.busy_s = 0.0
        self.ready_at: float | None = None  # time.time() when an engine first could take requests

    def exclusive(self, cached: CachedEngine) -> threading.RLock:
        """The lock of the engine instance behind ``cached`` (one batch call at a time)."""
        with self._timing:
            return self._locks.setdefault(id(cached.engine), threading.RLock())

    @contextlib.contextmanager
    def call(self, cached: CachedEngine) -> Iterator[None]:
        with self.exclusive(cached):
            if not cached._started:
                cached.engine.start()  # idempotent on a shared instance
                cached._started = True
            with self._timing:
                if self.ready_at is None:
                    self.ready_at = time.time()
                if self._inflight == 0:
                    self._busy_since = time.perf_counter()
                self._inflight += 1
            try:
                yield
            finally:
                with self._timing:
                    self._inflight -= 1
                    if self._inflight == 0:
                        self.busy_s += time.perf_counter() - self._busy_since

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self._cache = ResponseCache(response_cache_path())
        return self._cache

    def add(self, role: str, cfg: Any, engine: Any = None, where: str = "") -> CachedEngine:
        """The engine of ``role``: built from ``cfg`` (or ``engine``, already built) on first use."""
        if role in self.roles:
            return self.roles[role]
        key = engine_identity(cfg)
        inst = self._instances.get(key)
        if inst is None:
            inst = engine if engine is not None else _PROVIDED.get(key)
            if inst is None:
                inst = build_engine(cfg, where or f"{role} engine")
            self._instances[key] = inst
        cached = CachedEngine(inst, self.cache, role=role, guard=self)
        self.roles[role] = cached
        return cached

    def _owned(self, c: CachedEngine) -> bool:
        return all(c.engine is not e for e in _PROVIDED.values())

    def release(self) -> None:
        """Stop the engines that started (free their memory); the next call of a role starts its
        engine again. ``synthflow target`` releases the student before each generation run."""
        closed: set[int] = set()
        for c in self.roles.values():
            if c._started and id(c.engine) not in closed and self._owned(c):
                closed.add(id(c.engine))
                c.engine.close()
            c._started = False

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per-role accounting for the run summary."""
        return {role: c.usage() for role, c in self.roles.items()}

    def close(self) -> None:
        closed: set[int] = set()
        for c in self.roles.values():
            if c._started and id(c.engine) not in closed and self._owned(c):
                closed.add(id(c.engine))
                c.engine.close()
        if self._cache is not None:
            self._cache.close()


USAGE_KEYS = ("hits", "misses", "prompt_tokens", "completion_tokens", "engine_seconds")


def usage_totals(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """Engine usage summed: cache hits and misses, tokens, engine seconds. The one place token
    totals are added up (a run's generation roles, a shard's, the shards of a run)."""
    out: dict[str, Any] = dict.fromkeys(USAGE_KEYS, 0)
    for u in usages:
        for k in USAGE_KEYS:
            out[k] += u.get(k, 0) or 0
    out["engine_seconds"] = round(float(out["engine_seconds"]), 2)
    return out


def usage_fields(u: dict[str, Any]) -> dict[str, Any]:
    """Usage as a summary (and a shard's report) shows it: cache, tokens, engine seconds."""
    return {
        "cache": {"hits": u["hits"], "misses": u["misses"]},
        "tokens": {"prompt": u["prompt_tokens"], "completion": u["completion_tokens"]},
        "engine_seconds": u["engine_seconds"],
    }


def usage_of(fields: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`usage_fields` (a shard's report summed into its run's summary)."""
    c, t = fields["cache"], fields["tokens"]
    return {
        "hits": c["hits"],
        "misses": c["misses"],
        "prompt_tokens": t["prompt"],
        "completion_tokens": t["completion"],
        "engine_seconds": fields["engine_seconds"],
    }
