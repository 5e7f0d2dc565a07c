"""Scorers: components that add ``score_*`` columns to a batch and never drop a row.

A scorer declares the scores it writes (``outputs``: each becomes a ``score_<name>`` float column),
any further columns (``columns``, e.g. a judge's rationale) and its prompt templates. A scorer that
needs a model asks its context for the engine of its role (``judge``, ``scorer_model``); the engine
comes wrapped in the run's response cache with its own accounting. What a scorer cannot score is a
null score, never a crash and never a dropped row: thresholds (a later, cheap step) decide.

The recipe names scorers under ``scoring:`` (``{name: params}``); ``sklearn:DIR`` is shorthand for
``sklearn: {model: DIR}``.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from synthflow import registry
from synthflow.errors import UserError
from synthflow.filtering import Component, Filter
from synthflow.record import Record, StageResult


class ScorerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineScorerParams(ScorerParams):
    # an EngineConfig mapping; None: the scorer's default for its role
    engine: dict[str, Any] | None = None


@dataclass
class ScoreContext:
    """What a scorer may use: engines by role, the run's generator engine config and name."""

    engines: Any = None  # EnginePool
    generator_engine: Any = None  # EngineConfig of the run's generator role
    generator: str = ""
    seed: int = 0
    where: str = "scoring"

    def engine(self, role: str, cfg: Any) -> Any:
        if self.engines is None:
            raise UserError(f"{self.where}: no engines available for role {role!r}")
        return self.engines.add(role, cfg, where=f"{self.where}.engine.name")


class Scorer(Component, ABC):
    """A component of the score step: it writes ``score_<name>`` for each of its ``outputs`` and
    its declared ``columns``, and never drops a row."""

    Params: ClassVar[type[BaseModel]] = ScorerParams
    outputs: ClassVar[tuple[str, ...]] = ()  # score names: columns score_<name> (float64)
    prompts: ClassVar[dict[str, str]] = {}  # its templates under prompts/
    role: ClassVar[str] = ""  # engine role, '' when it needs no model
    arg_param: ClassVar[str | None] = None  # ``name:ARG`` sets this param

    def __init__(self, params: Any, ctx: ScoreContext):
        super().__init__(params, ctx)
        self.seconds = 0.0
        self.rows = 0

    @classmethod
    def fingerprint_part(cls, params: Any) -> Any:
        """What of the params decides the scores (a model's content, not its path)."""
        return params.model_dump(mode="json")

    def engine_config(self) -> Any:
        """The EngineConfig of this scorer's role (``params.engine`` or the role's default)."""
        from synthflow.recipe import EngineConfig

        raw = getattr(self.params, "engine", None)
        if raw is not None:
            return registry.validate_model(EngineConfig, raw, f"{self.ctx.where}.{self.name}.engine")
        return self.default_engine()

    def default_engine(self) -> Any:
        from synthflow.recipe import EngineConfig

        return self.ctx.generator_engine or EngineConfig()

    def engine(self) -> Any:
        return self.ctx.engine(self.role, self.engine_config())

    def preflight(self) -> None:
        """Cheap checks before a run (an engine that is down fails here, exit 2)."""
        if self.role:
            self.engine().engine.preflight()

    def __call__(self, records: Sequence[Record]) -> None:
        t0 = time.perf_counter()
        self.score(records)
        self.seconds += time.perf_counter() - t0
        self.rows += len(records)

    @abstractmethod
    def score(self, records: Sequence[Record]) -> None:
        """Set ``r.scores[name]`` for every output (None when it cannot score) and declared columns
        in ``r.fields``. One engine call per batch at most per step; never drop a row."""


def validate_scorer(spec: str, params: dict[str, Any] | None, where: str) -> tuple[type[Scorer], Any]:
    return registry.component("scorer", spec, params, where)


def build_scorers(scoring: dict[str, dict[str, Any]], ctx: ScoreContext) -> list[Scorer]:
    out = []
    for spec, params in scoring.items():
        where = f"{ctx.where}.{spec}"
        cls, p = validate_scorer(spec, params, where)
        out.append(cls(p, ctx))
    return out


class ScoreStage(Filter):
    """The ``score`` step: every scorer of the recipe over the batch, in order. Drops nothing."""

    name = "score"
    stage = "score"

    def __init__(self, scorers: list[Scorer]):
        super().__init__({}, None)
        self.scorers = scorers

    @property
    def columns(self) -> dict[str, pa.DataType]:
        cols: dict[str, pa.DataType] = {}
        for s in self.scorers:
            cols.update(s.columns)
        return cols

    @property
    def writes(self) -> set[str]:
        return {c for s in self.scorers for c in s.writes}

    @property
    def outputs(self) -> list[str]:
        return [o for s in self.scorers for o in s.outputs]

    def preflight(self) -> None:
        for s in self.scorers:
            s.preflight()

    def __call__(self, records: Sequence[Record]) -> StageResult:
        records = list(records)
        if records:
            for s in self.scorers:
                s(records)
        return StageResult(kept=records)

    def summary(self) -> dict[str, Any]:
        out = {}
        for s in self.scorers:
            d = {"rows": s.rows, "seconds": round(s.seconds, 2), **s.summary()}
            out[s.name] = d
        return out

    def close(self) -> None:
        for s in self.scorers:
            s.close()


# ---- helpers shared by scorers -------------------------------------------------------------------
def instruction_response(r: Record) -> tuple[str, str]:
    """First user turn and last assistant turn of a record's conversation."""
    user = next((m["content"] for m in r.messages if m.get("role") == "user"), "")
    asst = next((m["content"] for m in reversed(r.messages) if m.get("role") == "assistant"), "")
    return user or "", asst or ""


def sampled(row_id: str, fraction: float, salt: str) -> bool:
    """Reproducible by row id: the same rows are chosen every time for a given fraction."""
    if fraction >= 1:
        return True
    h = int(hashlib.sha256(f"{salt}:{row_id}".encode()).hexdigest()[:12], 16)
    return h / float(1 << 48) < fraction
