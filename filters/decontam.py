"""Benchmark decontamination stage: rows sharing an n-gram with a benchmark item, containing most of
its task statement, or most of its word pairs, are rejected as
``contaminated:<benchmark>:<item id>:<signal>`` (signal ``ngram13``, ``statement=0.88`` or
``overlap=0.74``); the summary counts removals per benchmark, every set listed. By default the whole
conversation is checked: the instruction and the response."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthflow.dedup.decontam import NgramIndex, first_hits, load_benchmark
from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register


class DecontamParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval"],
        description="built-in sets (gsm8k, math500, humaneval, mbpp, ifeval), file:field[:id], "
        "hf:name:split:field[:id]",
    )
    ngram: int = Field(13, ge=3)
    short_ngram: int = Field(7, ge=3)
    coverage: float = Field(
        0.85,
        gt=0,
        le=1,
        description="share of a benchmark task statement's words (in order) that flags a row",
    )
    field: str = Field(
        "messages", description="text checked (default: the conversation, instruction and response)"
    )


@register("filter", "decontaminate")
class Decontaminate(Filter):
    name = "decontaminate"
    stage = "decontam"
    reads_text = True
    Params = DecontamParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        p = self.params
        self.indexes = [
            NgramIndex(load_benchmark(b), p.ngram, p.short_ngram, p.coverage) for b in p.benchmarks
        ]
        self.removed: Counter = Counter()

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        field = self.params.field
        hits = first_hits(self.indexes, [r.text_for(field) for r in records])
        for r, h in zip(records, hits, strict=True):
            if h is None:
                res.kept.append(r)
            else:
                self.removed[h[0]] += 1
                res.rejects.append(Reject(r, self.stage, f"contaminated:{h[0]}:{h[1]}:{h[2]}"))
        return res

    def summary(self) -> dict[str, Any]:
        field = (
            "conversation (instruction and response)"
            if self.params.field == "messages"
            else self.params.field
        )
        return {"field": field, "removed": {idx.name: self.removed.get(idx.name, 0) for idx in self.indexes}}
