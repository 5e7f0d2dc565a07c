"""Quality: scores are columns (``heuristic_scores``); thresholds are a separate, cheap step."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import get, register
from synthflow.text import words


def repetition(ws: list[str], n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one (0 = none, near 1 = loops)."""
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    c = Counter(grams)
    return sum(v - 1 for v in c.values()) / len(grams)


@register("scorer", "heuristics")
def heuristic_scores(r: Record) -> dict[str, float]:
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
        "answer_present": 1.0 if (ans is None and aw) or (ans is not None and str(ans).strip()) else 0.0,
        "finished": 1.0 if r.gen.get("finish_reason", "stop") in ("stop", "") else 0.0,
    }


class ScoreParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorers: list[str] = Field(default_factory=lambda: ["heuristics"])


@register("filter", "heuristic_scores")
class HeuristicScores(Filter):
    """Adds score columns; drops nothing."""

    name = "heuristic_scores"
    stage = "score"
    Params = ScoreParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.scorers = [get("scorer", s, "filters.heuristic_scores.scorers") for s in self.params.scorers]

    def __call__(self, records: Sequence[Record]) -> StageResult:
        for r in records:
            for fn in self.scorers:
                r.scores.update(fn(r))
        return StageResult(kept=list(records))


class ThresholdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)


def threshold_reason(scores: dict[str, float], p: Any) -> str:
    """The first failed bound as a reject reason, or '' when the record passes."""
    for k, lo in p.min.items():
        v = scores.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v < lo:
            return f"quality:{k}<{lo:g}" + (f" ({v:g})" if v is not None else " (missing)")
    for k, hi in p.max.items():
        v = scores.get(k)
        if v is None or v > hi:
            return f"quality:{k}>{hi:g}" + (f" ({v:g})" if v is not None else " (missing)")
    return ""


@register("filter", "thresholds")
class Thresholds(Filter):
    """Accepts a record when every named score is within its bounds. Re-thresholding reads
    the score columns back; it never re-runs an LLM."""

    name = "thresholds"
    stage = "accept"
    Params = ThresholdParams

    @classmethod
    def contract_params(cls) -> dict[str, Any]:
        return {"min": {"prompt_words": 1000}}

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
