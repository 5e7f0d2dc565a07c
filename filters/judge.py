"""LLM-as-judge: a versioned rubric template per kind of data, one engine call per batch.

Rubrics (``prompts/judge/``): ``general`` (helpfulness, correctness, instruction-following), ``math``
(is the final answer right, is it reached soundly) and ``code`` (does it solve the task, is it
idiomatic); ``auto`` picks one from the row's generator. By default the judge answers a JSON object,
rationale first, under the engine's structured outputs (JSON schema: a rationale of at most 600
characters, an integer score 1-10), so even a small judge model gives a parseable verdict;
``structured: false`` asks for ``Rationale: ... Score: N`` text instead. Either parses to
``score_judge`` (1-10) and ``judge_rationale``. What does not parse is a null score
with ``judge_error`` set, never a crash. ``sample`` judges a fraction of rows, chosen by row id.

A judge is part of a training signal, so it is guarded against the rows it judges: a response that
addresses the judge or writes its own verdict ("Score: 10/10", "ignore previous instructions") is
not sent to the judge at all; it gets ``judge_error = injection_suspected`` and a null score.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from synthflow.engines.base import Sampling
from synthflow.prompts import load_prompt
from synthflow.record import Record
from synthflow.registry import register
from synthflow.scoring import EngineScorerParams, Scorer, instruction_response, sampled

RUBRIC_BY_GENERATOR = {"math_pal": "math", "math_templates": "math", "code_codet": "code"}

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string", "maxLength": 600},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["rationale", "score"],
}
_SCORE_RES = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(
        r"\b(?:score|rating)\b\"?\s*(?:\(\s*1\s*-\s*10\s*\))?\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*\**"
        r"(?:\s*(?:/|out of)\s*10)?",
        re.I,
    ),
)
INJECTION = tuple(
    re.compile(p, re.I | re.M)
    for p in (
        r"\b(?:score|rating|grade)\s*[:=]\s*\[{0,2}\s*\d+(?:\.\d+)?\s*\]{0,2}\s*(?:/\s*10|out of 10)",
        r"\[\[\s*\d+(?:\.\d+)?\s*\]\]",
        r"^\s*(?:final\s+)?(?:score|rating)\s*[:=]\s*\d+(?:\.\d+)?\s*$",
        r"[\"']score[\"']\s*:\s*\d",
        r"\bignore (?:all |any |the )?(?:previous|prior|above|earlier|preceding) (?:instructions|rules|prompts?|text)\b",
        r"\b(?:dear|attention|note (?:to|for)(?: the)?|hey|hello)\s+(?:ai\s+|llm\s+)?(?:judge|grader|evaluator|reviewer)s?\b",
        r"\b(?:ai|llm|model)\s+(?:judge|grader|evaluator)s?\b",
        r"\b(?:give|assign|award|rate)\s+(?:this|the|my)\s+(?:response|answer|solution|code)\s+"
        r"(?:a\s+|an\s+)?(?:perfect\s+)?(?:score\s+of\s+)?(?:\d+|perfect|full marks)",
    )
)
_TAGS = re.compile(r"</?\s*(?:instruction|response|problem|solution|task)\s*>", re.I)


def injection(text: str) -> bool:
    """Does the text address the judge or carry a verdict of its own?"""
    return any(p.search(text) for p in INJECTION)


def parse_judgment(text: str, finish_reason: str = "stop") -> tuple[float | None, str, str | None]:
    """``(score, rationale, error)``: the JSON verdict, or else the last score the judge wrote and
    what came before it; scores outside 1-10 are an error."""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "score" in obj:
            rationale = str(obj.get("rationale") or "").strip()[:2000]
            v = obj["score"]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return None, rationale, "unparsed"
            return (float(v), rationale, None) if 1 <= v <= 10 else (None, rationale, "score_out_of_range")
    best = None
    for rx in _SCORE_RES:
        for m in rx.finditer(text):
            if best is None or m.start() > best.start():
                best = m
    if best is None:
        return None, text.strip()[:2000], "unparsed:length" if finish_reason == "length" else "unparsed"
    value = float(best.group(1))
    rationale = re.sub(r"^\s*rationale\s*:\s*", "", text[: best.start()], flags=re.I).strip()[:2000]
    if not 1 <= value <= 10:
        return None, rationale, "score_out_of_range"
    return value, rationale, None


class JudgeParams(EngineScorerParams):
    rubric: Literal["auto", "general", "math", "code"] = "auto"
    sample: float = Field(1.0, gt=0, le=1, description="fraction of rows judged, chosen by row id")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(256, gt=0)
    max_chars: int = Field(6000, gt=0, description="instruction and response are cut to this length")
    structured: bool = Field(True, description="JSON verdict under the engine's structured outputs")


@register("scorer", "judge")
class Judge(Scorer):
    name = "judge"
    Params = JudgeParams
    outputs = ("judge",)
    columns = {
        "judge_rationale": pa.string(),
        "judge_error": pa.string(),
        "judge_rubric": pa.string(),  # template@version
        "judge_model": pa.string(),
    }
    prompts = {"general": "judge/general.jinja2", "math": "judge/math.jinja2", "code": "judge/code.jinja2"}
    role = "judge"

    def __init__(self, params: Any, ctx: Any):
        super().__init__(params, ctx)
        self.templates = {k: load_prompt(v) for k, v in self.prompts.items()}
        self.counts: Counter = Counter()

    def rubric_for(self, r: Record) -> str:
        if self.params.rubric != "auto":
            return self.params.rubric
        return RUBRIC_BY_GENERATOR.get(r.generator or self.ctx.generator, "general")

    def sampling(self) -> Sampling:
        p = self.params
        return Sampling(temperature=p.temperature, top_p=1.0, max_tokens=p.max_tokens, seed=self.ctx.seed)

    def score(self, records: Sequence[Record]) -> None:
        from synthflow.engines.base import Request

        todo: list[tuple[Record, str]] = []
        reqs: list[Request] = []
        for r in records:
            r.scores["judge"] = None
            for c in self.columns:
                r.fields[c] = None
            if not sampled(r.id, self.params.sample, "judge"):
                self.counts["not_sampled"] += 1
                continue
            instr, resp = instruction_response(r)
            if not resp.strip():
                r.fields["judge_error"] = "empty_response"
                self.counts["empty_response"] += 1
                continue
            if injection(instr + "\n" + resp):
                r.fields["judge_error"] = "injection_suspected"
                self.counts["injection_suspected"] += 1
                continue
            rubric = self.rubric_for(r)
            tmpl = self.templates[rubric]
            cut = self.params.max_chars
            structured = self.params.structured
            msgs = tmpl.render(
                instruction=_TAGS.sub("", instr)[:cut], response=_TAGS.sub("", resp)[:cut], json=structured
            )
            reqs.append(Request(messages=msgs, json_schema=JUDGE_SCHEMA if structured else None))
            todo.append((r, rubric))
        if not reqs:
            return
        eng = self.engine()
        comps = eng.generate(reqs, self.sampling())  # one call for the batch
        for (r, rubric), req, comp in zip(todo, reqs, comps, strict=True):
            score, rationale, err = parse_judgment(req.prefill + comp.text, comp.finish_reason)
            r.scores["judge"] = score
            r.fields.update(
                judge_rationale=rationale,
                judge_error=err,
                judge_rubric=self.templates[rubric].label,
                judge_model=eng.model_id,
            )
            self.counts["judged" if err is None else (err or "").split(":")[0]] += 1

    def summary(self) -> dict[str, Any]:
        return dict(self.counts)
