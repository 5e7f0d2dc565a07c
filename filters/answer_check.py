"""An independent answer check for generators whose answers are free text, labels or spans
(AgentInstruct, Bonito, Self-Instruct classification instances, the ensemble's math mode).

The engine of role ``checker`` (default: the generator's) answers each row's task again, ``k``
times, seeing the task (and its passage) but never the proposed answer. A row is kept only when at
least ``min_agreement`` of the independent answers agree with its answer (numbers by math-verify,
labels and spans by normalized match, free text by ROUGE-L), and, for tasks about a passage, when its
answer is supported by the passage (a span of it, or mostly its words). The agreement is a column,
so a stricter bar is a later threshold. Rejects: ``verify:answer_disagrees``, ``verify:ungrounded``.

A model that checks itself shares its own blind spots; point ``engine`` at a larger model where one
is available. The re-answers are sampled (``temperature``), so one lucky agreement does not decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.answers import AnswerTask, agrees, supported
from synthflow.engines.base import Request, Sampling
from synthflow.filtering import Filter
from synthflow.prompts import load_prompt
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register, validate_model


class AnswerCheckParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(3, ge=1, le=16, description="independent answers per row")
    min_agreement: float = Field(0.67, gt=0, le=1, description="share of them that must agree")
    rouge_min: float = Field(0.5, gt=0, le=1, description="free text: ROUGE-L F1 that counts as agreeing")
    grounded: bool = Field(True, description="tasks about a passage: the answer must be supported by it")
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(128, gt=0)
    engine: dict[str, Any] | None = Field(None, description="the checker's engine (default: the generator's)")
    prompt: str = "answer_check/answer.jinja2"


@register("filter", "answer_check")
class AnswerCheck(Filter):
    name = "answer_check"
    stage = "verify"
    Params = AnswerCheckParams
    columns: ClassVar[dict[str, pa.DataType]] = {
        "answer_agreement": pa.float64(),  # share of the independent answers that agree
        "answer_checks": pa.list_(pa.string()),  # the independent answers
    }

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.template = load_prompt(self.params.prompt)
        self._engine: Any = None
        self.checked = self.disagreed = self.ungrounded = self.skipped = 0

    def engine(self) -> Any:
        if self._engine is None:
            from synthflow.recipe import EngineConfig

            base = self.ctx.recipe.engine
            cfg = (
                validate_model(
                    EngineConfig, {**base.model_dump(), **self.params.engine}, "answer_check.engine"
                )
                if self.params.engine
                else base
            )
            self._engine = self.ctx.engines.add("checker", cfg, where="field filters.answer_check.engine")
        return self._engine

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        gen = self.ctx.generator
        tasks: list[tuple[Record, AnswerTask]] = []
        for r in records:
            t = gen.answer_task(r.fields) if gen is not None else None
            if t is None:  # a row with nothing to re-answer (e.g. a summary, a non-classification instance)
                self.skipped += 1
                res.kept.append(r)
            else:
                tasks.append((r, t))
        if not tasks:
            return res
        p = self.params
        reqs = [
            Request(
                messages=self.template.render(question=t.question, passage=t.passage, hint=t.hint),
                sample_index=j,
            )
            for _, t in tasks
            for j in range(p.k)
        ]
        seed = getattr(self.ctx.recipe.engine, "seed", 0)
        comps = self.engine().generate(reqs, Sampling(p.temperature, 0.95, p.max_tokens, seed))
        for i, (r, t) in enumerate(tasks):
            others = [c.text.strip() for c in comps[i * p.k : (i + 1) * p.k]]
            share = sum(agrees(t, o, p.rouge_min) for o in others) / p.k
            r.fields["answer_agreement"] = round(share, 4)
            r.fields["answer_checks"] = others
            self.checked += 1
            if share < p.min_agreement:
                self.disagreed += 1
                res.rejects.append(
                    Reject(r, self.stage, f"verify:answer_disagrees:{t.kind} (agreement {share:.2f})")
                )
            elif p.grounded and t.grounded and not supported(t):
                self.ungrounded += 1
                res.rejects.append(Reject(r, self.stage, f"verify:ungrounded:{t.kind}"))
            else:
                res.kept.append(r)
        return res

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "disagreed": self.disagreed,
            "ungrounded": self.ungrounded,
            "not_checkable": self.skipped,
        }
