"""The one record type that flows through every stage, and the stage contract.

A stage takes a batch of records and returns a :class:`StageResult`: the records it kept and the
rejects it dropped, each reject carrying ``(stage, reason)``. Stages know nothing about Prefect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Record:
    """One candidate training example and everything known about it."""

    id: str
    recipe: str
    generator: str
    seed_id: str
    item: int = 0
    # generator-declared fields (problem, program, answer, instruction, response, ...)
    fields: dict[str, Any] = field(default_factory=dict)
    # TRL conversational format: [{"role": "user", ...}, {"role": "assistant", ...}]
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt_template: str = ""
    prompt_version: str = ""
    # engine, model, sampling, token counts, engine seconds, cache hit
    gen: dict[str, Any] = field(default_factory=dict)
    # verification verdict: kind, status, mode, exc_type, message, duration_s, details
    verdict: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    # raw LLM text, kept for rejects and debugging (not a training column)
    raw: str = ""

    def text_for(self, key: str) -> str:
        """Text of a field by name; ``a+b`` joins several fields, ``messages`` joins the conversation."""
        parts = []
        for k in key.split("+"):
            if k == "messages":
                parts.append("\n".join(m["content"] for m in self.messages))
            else:
                v = self.fields.get(k, "")
                parts.append(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
        return "\n".join(parts)


@dataclass
class Reject:
    record: Record
    stage: str
    reason: str


@dataclass
class StageResult:
    kept: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0  # the stage's own time (set by the runner, for the ledger)

    def extend(self, other: StageResult) -> None:
        self.kept.extend(other.kept)
        self.rejects.extend(other.rejects)


@runtime_checkable
class Stage(Protocol):
    """A batch-in, batch-out step. ``stage`` is the funnel bucket it reports under
    (``verify``, ``dedup``, ``score``...)."""

    name: str
    stage: str

    def __call__(self, records: Sequence[Record]) -> StageResult: ...


def stable_id(*parts: Any) -> str:
    """A short content hash, stable across runs and machines."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return h[:16]


def reject_all(records: Iterable[Record], stage: str, reason: str) -> list[Reject]:
    return [Reject(r, stage, reason) for r in records]
