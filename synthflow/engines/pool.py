"""Engines by role: ``generator``, ``judge``, ``scorer_model``, ...

Each role gets its own :class:`CachedEngine` (the same response cache, its own token accounting), so
judge tokens never count as generation. Roles whose configs name the same engine and model share one
engine instance: one in-process vLLM serves the generator and the IFD scorer of a default run.
Engines are built lazily and start on their first call.
"""

from __future__ import annotations

import os
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
    return (cfg.name, model, cfg.base_url, cfg.script)


class EnginePool:
    def __init__(self, cache: ResponseCache | None = None):
        self._cache = cache
        self._instances: dict[tuple[Any, ...], Any] = {}
        self.roles: dict[str, CachedEngine] = {}

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
            inst = engine if engine is not None else build_engine(cfg, where or f"{role} engine")
            self._instances[key] = inst
        cached = CachedEngine(inst, self.cache, role=role)
        self.roles[role] = cached
        return cached

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per-role accounting for the run summary."""
        return {role: c.usage() for role, c in self.roles.items()}

    def close(self) -> None:
        closed: set[int] = set()
        for c in self.roles.values():
            if c._started and id(c.engine) not in closed:
                closed.add(id(c.engine))
                c.engine.close()
        if self._cache is not None:
            self._cache.close()
