"""Quality: the ``heuristics`` scorer (columns), and the accept-time filters that read scores:
``thresholds`` (a cheap step that never re-runs a model) and ``shirker``."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult, finish_reason
from synthflow.registry import register
from synthflow.scoring import Scorer
from synthflow.text import words


def repetition(ws: list[str], n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one (0 = none, near 1 = loops)."""
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    c = Counter(grams)
    return sum(v - 1 for v in c.values()) / len(grams)


def echo(instruction_words: list[str], response_words: list[str], n: int = 3) -> float:
    """Fraction of the response's word n-grams that also occur in the instruction (1 = a parrot)."""
    grams = {tuple(response_words[i : i + n]) for i in range(len(response_words) - n + 1)}
    if not grams:
        return 0.0
    src = {tuple(instruction_words[i : i + n]) for i in range(len(instruction_words) - n + 1)}
    return len(grams & src) / len(grams)


def heuristic_scores(r: Record) -> dict[str, float | None]:
    user = "\n".join(m["content"] for m in r.messages if m["role"] == "user")
    asst = "\n".join(m["content"] for m in r.messages if m["role"] == "assistant")
    uw, aw = words(user), words(asst)
    text = user + asst
    non_ascii = sum(1 for ch in text if ord(ch) > 127) / max(1, len(text))
    distinct = len(set(uw + aw)) / max(1, len(uw) + len(aw))
    ans = r.fields.get("answer")
    return {
        "prompt_words": float(len(uw)),
        "response_words": float(len(aw)),
        "repetition": round(max(repetition(uw), repetition(aw)), 4),
        "distinct_words": round(distinct, 4),
        "non_ascii": round(non_ascii, 4),
        "echo": round(echo(uw, aw), 4),
        "answer_present": 1.0 if (ans is None and aw) or (ans is not None and str(ans).strip()) else 0.0,
        "finished": 0.0 if finish_reason(r.gen) in ("length", "abort") else 1.0,
    }


@register("scorer", "heuristics")
class Heuristics(Scorer):
    """Cheap text statistics: lengths, repetition, distinct words, non-ASCII share, echo of the
    instruction in the response, answer present, generation finished (not cut at max_tokens)."""

    name = "heuristics"
    outputs = (
        "prompt_words",
        "response_words",
        "repetition",
        "distinct_words",
        "non_ascii",
        "echo",
        "answer_present",
        "finished",
    )

    def score(self, records: Sequence[Record]) -> None:
        for r in records:
            r.scores.update(heuristic_scores(r))


class ThresholdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    missing: Literal["reject", "keep"] = Field(
        "reject", description="a row without the score (null: not judged, not scorable) is rejected or kept"
    )


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def threshold_reason(scores: dict[str, float | None], p: Any) -> str:
    """The first failed bound as a reject reason, or '' when the record passes."""
    for bounds, op in ((p.min, "<"), (p.max, ">")):
        for k, bound in bounds.items():
            v = scores.get(k)
            if _missing(v):
                if getattr(p, "missing", "reject") == "reject":
                    return f"quality:{k}{op}{bound:g} (missing)"
                continue
            if (v < bound) if op == "<" else (v > bound):
                return f"quality:{k}{op}{bound:g} ({v:g})"
    return ""


@register("filter", "thresholds")
class Thresholds(Filter):
    """Accepts a record when every named score is within its bounds. Re-thresholding reads
    the score columns back; it never re-runs an LLM."""

    name = "thresholds"
    stage = "accept"
    Params = ThresholdParams

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        for r in records:
            reason = threshold_reason(r.scores, self.params)
            if reason:
                res.rejects.append(Reject(r, self.stage, reason))
            else:
                res.kept.append(r)
        return res


EVASIVE = (
    r"\bas an ai\b",
    r"\bi(?: a|')m (?:just )?an? (?:ai|language model)\b",
    r"\bi (?:cannot|can't|can not|am unable to|won't) (?:help|assist|provide|answer|do that|write|create)",
    r"\bi'?m sorry,? but\b",
    r"\bplease consult (?:a|an) (?:professional|expert)\b",
    r"\bit depends on (?:many|various) factors\b",
)
PLACEHOLDER = (r"\[insert [^\]]*\]", r"\blorem ipsum\b", r"\bto be continued\b", r"\.\.\.\s*$", r"\bTODO\b")


class ShirkerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_words: int = Field(25, ge=0, description="responses shorter than this are shirking")
    evasive: list[str] = Field(default_factory=lambda: list(EVASIVE))
    placeholder: list[str] = Field(default_factory=lambda: list(PLACEHOLDER))


@register("filter", "shirker")
class Shirker(Filter):
    """Instruct-SkillMix's warning: 'shirker' answers (too short, evasive, unfinished) ruin SFT.
    Rejects them as ``shirker:short``, ``shirker:evasive`` or ``shirker:placeholder``."""

    name = "shirker"
    stage = "accept"
    Params = ShirkerParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self._evasive = [re.compile(p, re.I) for p in self.params.evasive]
        self._placeholder = [re.compile(p, re.I) for p in self.params.placeholder]

    def reason(self, response: str) -> str:
        if len(response.split()) < self.params.min_words:
            return "shirker:short"
        if any(p.search(response) for p in self._evasive):
            return "shirker:evasive"
        if any(p.search(response) for p in self._placeholder):
            return "shirker:placeholder"
        return ""

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        for r in records:
            resp = "\n".join(m["content"] for m in r.messages if m["role"] == "assistant")
            why = self.reason(resp)
            if why:
                res.rejects.append(Reject(r, self.stage, why))
            else:
                res.kept.append(r)
        return res
