"""Filter contract. A filter is a stage with validated params; stateful filters (dedup) may persist
state in ``commit()`` once the run's data is final."""

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


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class FilterContext:
    recipe: Any = None
    generator: Any = None
    out_root: Path | None = None
    run_id: str = ""
    dask: str | None = None  # the run's --dask cluster (CPU stages fan out there), not a recipe field

    @property
    def text_field(self) -> str:
        return getattr(self.generator, "text_field", "messages")


class Filter(ABC):
    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""  # funnel bucket: verify | dedup | decontam | score | accept
    Params: ClassVar[type[BaseModel]] = NoParams
    # columns this filter fills in record.fields (typed Parquet columns, like a generator's)
    columns: ClassVar[dict[str, pa.DataType]] = {}
    # False when a row's verdict depends on the rows of earlier batches other than through admit
    # (e.g. select's distance to the rows it kept): not usable in a sharded run
    shardable: ClassVar[bool] = True

    def __init__(self, params: Any = None, ctx: FilterContext | None = None):
        self.params = (
            params if isinstance(params, BaseModel) else self.validate_params(params or {}, self.name)
        )
        self.ctx = ctx or FilterContext()

    @classmethod
    def validate_params(cls, params: dict[str, Any], where: str) -> Any:
        return validate_model(cls.Params, params, where)

    @property
    def bucket(self) -> str:
        """The step of the data's way it runs in: decontamination runs with dedup."""
        return "dedup" if self.stage == "decontam" else self.stage

    @classmethod
    def contract_params(cls) -> dict[str, Any]:
        """Params under which the contract test's inputs make this filter reject something."""
        return {}

    @classmethod
    def contract_text(cls, i: int) -> str:
        """Text of the i-th contract record (the same text for all: duplicates)."""
        return "Tom has three apples and buys two more apples at the market today. How many now?"

    @abstractmethod
    def __call__(self, records: Sequence[Record]) -> StageResult:
        """Keep or reject each record; every reject carries (stage, reason)."""

    def admit(self, records: list[Record]) -> StageResult:
        """Rows the accept step kept, in order: a dedup filter indexes them now (and rejects a row
        that duplicates one admitted before it), so a row that a later step rejected never blocks
        another. Default: admit all."""
        return StageResult(kept=list(records))

    def finalize(self, accepted: list[Record]) -> None:
        """Once the run's accepted rows are known, before they are written (e.g. cluster ids)."""

    def commit(self, accepted: set[str]) -> None:
        """Persist state once the run's output is final; ``accepted`` are the published row ids."""

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release processes or connections (default: none)."""
