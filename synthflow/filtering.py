"""The component contract that filters and scorers share, and the filter contract.

A component has validated params, declares the record fields it reads and the fields it writes
(each written field is a typed Parquet column, and each column has one owner), and may summarize
and release what it holds. A recipe whose components read a field nobody before them writes fails
when it is loaded (``synthflow.recipe.check_fields``), with one line naming the field.

A filter is a component that runs in one step of the data's way and keeps or rejects each row;
stateful filters (dedup) may persist state in ``commit()`` once the run's data is final.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from synthflow.record import Record, StageResult
from synthflow.registry import validate_model

# The data's way after generation, in order: each filter runs in one of these steps.
STEPS = ("verify", "dedup", "score", "accept")


def step_of(stage: str) -> str:
    """The step a filter of this funnel stage runs in: decontamination runs with dedup."""
    return "dedup" if stage == "decontam" else stage


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def text_fields(spec: str) -> set[str]:
    """The fields a text spec (``problem``, ``instruction+input``, ``messages``) reads."""
    return {k for k in spec.split("+") if k and k != "messages"}


class Component:
    """What filters and scorers share: params, declared reads and writes, summary, close."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    # the fields it fills in record.fields, with their Parquet types
    columns: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, params: Any = None, ctx: Any = None):
        self.params = (
            params if isinstance(params, BaseModel) else self.validate_params(params or {}, self.name)
        )
        self.ctx = ctx

    @classmethod
    def validate_params(cls, params: dict[str, Any], where: str) -> Any:
        return validate_model(cls.Params, params, where)

    # True for components that read the text their ``field`` param names (default: the
    # generator's text field), such as dedup and decontamination
    reads_text: ClassVar[bool] = False

    @classmethod
    def reads_of(cls, params: Any, text_field: str = "messages") -> set[str]:
        """The record fields a component with these params reads (beyond messages and scores);
        ``text_field``: the generator's default text field."""
        if cls.reads_text:
            return text_fields(getattr(params, "field", None) or text_field)
        return set()

    @classmethod
    def writes_of(cls, params: Any) -> set[str]:
        return set(cls.columns)

    @property
    def writes(self) -> set[str]:
        return self.writes_of(self.params)

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release processes or connections (default: none)."""


@dataclass
class FilterContext:
    recipe: Any = None
    generator: Any = None
    out_root: Path | None = None
    run_id: str = ""
    dask: str | None = None  # the run's --dask cluster (CPU stages fan out there), not a recipe field
    engines: Any = None  # the run's EnginePool: engines by role, for filters that ask a model (answer_check)

    @property
    def text_field(self) -> str:
        return getattr(self.generator, "text_field", "messages")


class Filter(Component, ABC):
    stage: ClassVar[str] = ""  # funnel bucket: verify | dedup | decontam | score | accept
    # False when a row's verdict depends on the rows of earlier batches other than through admit
    # (e.g. select's distance to the rows it kept): not usable in a sharded run
    shardable: ClassVar[bool] = True

    def __init__(self, params: Any = None, ctx: FilterContext | None = None):
        super().__init__(params, ctx or FilterContext())

    @property
    def bucket(self) -> str:
        """The step of the data's way it runs in."""
        return step_of(self.stage)

    @abstractmethod
    def __call__(self, records: Sequence[Record]) -> StageResult:
        """Keep or reject each record; every reject carries (stage, reason)."""

    def admit(self, records: list[Record]) -> StageResult:
        """Rows the accept step kept, in order: a dedup filter indexes them now (and rejects a row
        that duplicates one admitted before it), so a row that a later step rejected never blocks
        another. Default: admit all."""
        return StageResult(kept=list(records))

    def recheck(self, accepted: list[Record]) -> StageResult:
        """At publish, while this run holds the output root's publish lock: check the run's rows
        against what other runs published since this one loaded its index (runs started together
        must not publish the same row twice). Default: keep all."""
        return StageResult(kept=list(accepted))

    def finalize(self, accepted: list[Record]) -> None:
        """Once the run's accepted rows are known, before they are written (e.g. cluster ids)."""

    def commit(self, accepted: set[str]) -> None:
        """Persist state once the run's output is final; ``accepted`` are the published row ids."""
