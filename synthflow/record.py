"""The one record type that flows through every stage, and the stage contract.

A stage takes a batch of records and returns a :class:`StageResult`: the records it kept and the
rejects it dropped, each reject carrying ``(stage, reason)``. Stages know nothing about Prefect.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


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


# reasons that name another row or a benchmark item after their kind (dedup:near:<id>:jaccard=..,
# contaminated:<set>:<item>:ngram13): the kind is the first two parts
_NAMING = ("dedup", "contaminated", "select")


def reason_head(reason: str) -> str:
    """A reason without what is particular to the row (another row's or an item's name, a
    parenthesis): ``dedup:near``, ``verify:answer_mismatch``, ``quality:judge<5``. Summaries and
    reports group rejects by it. The one place a reason string is read apart."""
    parts = reason.split(" (")[0].split(":")
    if parts[0] in _NAMING and len(parts) > 2:
        return ":".join(parts[:2])
    return ":".join(parts)


def reason_kind(reason: str) -> str:
    """The head without a threshold: ``quality:judge``, ``shirker:too_short``."""
    head = reason_head(reason)
    for op in ("<", ">"):
        head = head.split(op)[0]
    return head


@dataclass
class Reject:
    """A dropped row: the step that dropped it and why. ``reason`` is ``kind[:detail]``, e.g.
    ``verify:answer_mismatch``, ``dedup:near:<id>:jaccard=0.91``, ``quality:judge<5 (judge=3)``;
    ``kind`` and ``detail`` read it apart, so nothing else parses the string."""

    record: Record
    stage: str
    reason: str

    @property
    def head(self) -> str:
        return reason_head(self.reason)

    @property
    def kind(self) -> str:
        return reason_kind(self.reason)

    @property
    def detail(self) -> str:
        return self.reason[len(self.kind) :].lstrip(":")


@dataclass
class StageResult:
    kept: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0  # the stage's own time (set by the runner, for the ledger)

    def extend(self, other: StageResult) -> None:
        self.kept.extend(other.kept)
        self.rejects.extend(other.rejects)


def stable_id(*parts: Any) -> str:
    """A short content hash, stable across runs and machines."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return h[:16]


def finish_reason(gen: dict[str, Any]) -> str:
    """A row's finish reason: ``length`` when any step was cut at max_tokens, else the last step's."""
    steps = gen.get("steps") or []
    if any(st["finish_reason"] == "length" for st in steps):
        return "length"
    return steps[-1]["finish_reason"] if steps else gen.get("finish_reason", "")
