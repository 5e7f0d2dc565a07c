"""Verifiable instruction following (VIF-RAG, Dong et al. 2024; IFEval, Zhou et al. 2023): base
instructions with 1..k atomic constraints drawn from IFEval's catalogue, each checked by code.

Each item takes a base instruction from its seed (the shipped Self-Instruct seeds, any JSONL with an
``instruction`` or ``prompt``, or the rows of another run), draws a first constraint in turn (so the
mix covers the catalogue) and up to ``max_constraints - 1`` more that are compatible with it and with
each other (``synthflow.constraints``: IFEval's conflict table plus our pairs, as data), phrases them
into the instruction through ``prompts/constraints/respond.jinja2`` (one phrasing per constraint
type) and lets the model answer. The ``constraints`` filter checks every constraint on the answer.

With ``passage: true`` (the RAG variant) the seeds are passages: the model first writes a question
about the passage, and the answer must follow the constraints and be grounded in the passage (the
independent answer check, ``answer_check``, decides that).

Rows keep ``instruction_id_list`` and ``kwargs`` in IFEval's own format: IFEval, lm-eval and other IF
verifiers re-check them with ``prompt = instruction`` and ``response``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthflow import constraints as cat
from synthflow.answers import AnswerTask
from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, add_usage
from synthflow.record import Reject, StageResult
from synthflow.registry import did_you_mean, register
from synthflow.seeds import Seed

LANGUAGES = {"en": "English"}


class ConstraintsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_constraints: int = Field(1, ge=1, le=6, description="constraints per item, at least")
    max_constraints: int = Field(3, ge=1, le=6, description="constraints per item, at most")
    ids: list[str] | None = Field(
        None, description="the instruction ids to draw from (default: the catalogue)"
    )
    exclude: list[str] = Field(default_factory=list, description="instruction ids never drawn")
    passage: bool = Field(False, description="RAG: seeds are passages; the model asks a question first")

    @field_validator("ids", "exclude")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        known = cat.catalogue()
        for cid in v or []:
            if cid not in known:
                raise ValueError(f"unknown instruction id {cid!r}; {did_you_mean(cid, known)}")
        return v


def base_instruction(seed: Seed) -> str:
    """The seed's instruction, with its first instance's input when it has one (Self-Instruct)."""
    d = seed.data
    text = str(d.get("instruction") or d.get("prompt") or d.get("question") or seed.text or "").strip()
    inst = d.get("instances")
    inp = str(inst[0].get("input") or "").strip() if isinstance(inst, list) and inst else ""
    inp = inp or str(d.get("input") or "").strip()
    return f"{text}\n\n{inp}" if inp else text


_QUESTION = re.compile(r"^\s*(?:Question\s*[:：]\s*)?(.+?\?)\s*$", re.M)


def parse_question(text: str) -> str | None:
    """The first line that is a question (``Question: ...?``)."""
    m = _QUESTION.search(text)
    q = " ".join(m.group(1).split()) if m else ""
    return q if len(q.split()) >= 4 else None


@register("generator", "constraints")
class Constraints(Generator):
    name = "constraints"
    seed_fields = ("instruction", "prompt", "question", "text", "problem")
    prompts: ClassVar[dict[str, str]] = {
        "respond": "constraints/respond.jinja2",
        "question": "constraints/question.jinja2",
    }
    Options = ConstraintsOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),  # the prompt as the model saw it: the base instruction and its constraints
        "base_instruction": pa.string(),  # the instruction before the constraints were added
        "response": pa.string(),
        "instruction_id_list": pa.list_(pa.string()),  # IFEval's instruction ids
        "kwargs": cat.KWARGS_TYPE,  # IFEval's keyword arguments, one struct per id (null: unused)
        "constraint_passage": pa.string(),  # RAG: the passage the question is about
    }
    text_field = "instruction+response"
    response_field = "response"
    step_sampling: ClassVar[dict[str, dict[str, Any]]] = {"question": {"max_tokens": 64}}

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        o = self.opts
        if o.min_constraints > o.max_constraints:
            raise UserError("generator.options: min_constraints is above max_constraints")
        pool = [c for c in (o.ids or cat.catalogue()) if c not in set(o.exclude)]
        if not pool:
            raise UserError("generator.options: ids and exclude leave no constraint to draw")
        self.pool = pool
        self._first = list(pool)
        random.Random(f"{recipe.seed}:constraints:order").shuffle(self._first)

    # ---- drawing ---------------------------------------------------------------------------
    def draw(self, item: Item, instruction: str) -> list[dict[str, Any]]:
        """The item's constraints: its turn's first id, then compatible others (seeded by item)."""
        rng = random.Random(f"{self.recipe.seed}:constraints:{item.index}")
        first = self._first[item.index % len(self._first)]
        k = rng.randint(self.opts.min_constraints, self.opts.max_constraints)
        return cat.draw(rng, first, k, self.pool, instruction)

    def context(self, item: Item) -> dict[str, Any]:
        if self.opts.passage:
            return {"passage": item.seed.text.strip()}
        base = base_instruction(item.seed)
        return {"instruction": base, "constraints": self.draw(item, base), "passage": None,
                "languages": LANGUAGES}  # fmt: skip

    def render_examples(self) -> list[list[dict[str, str]]]:
        out = []
        for it in self.plan(0, 2):
            if self.opts.passage:
                out.append(self.templates["question"].render(passage=it.seed.text.strip()))
                q = "What does the passage say about its subject?"
                out.append(self.templates["respond"].render(instruction=q, constraints=self.draw(it, q),
                                                            passage=it.seed.text.strip(), languages=LANGUAGES))  # fmt: skip
            else:
                out.append(self.templates["respond"].render(**self.context(it)))
        return out

    # ---- the work --------------------------------------------------------------------------
    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        out = StageResult()
        questions: dict[int, tuple[str, Any]] = {}
        if self.opts.passage:
            tmpl = self.templates["question"]
            reqs = [
                self.request("question", tmpl.render(passage=it.seed.text.strip()), it.sample) for it in items
            ]
            for it, comp in zip(items, self.call(engine, "question", reqs, sampling), strict=True):
                q = parse_question(comp.text)
                if q is None or comp.finish_reason == "length":
                    rec = self.new_record(it, "question", comp, engine, sampling)
                    why = "truncated:question" if comp.finish_reason == "length" else "no_question"
                    out.rejects.append(Reject(rec, "parse", f"parse:{why}"))
                    continue
                questions[it.index] = (q, comp)
            items = [it for it in items if it.index in questions]
        tmpl = self.templates["respond"]
        plans = []
        for it in items:
            base = questions[it.index][0] if self.opts.passage else base_instruction(it.seed)
            passage = it.seed.text.strip() if self.opts.passage else None
            drawn = self.draw(it, base)
            msgs = tmpl.render(instruction=base, constraints=drawn, passage=passage, languages=LANGUAGES)
            plans.append((it, base, passage, drawn, msgs))
        reqs = [self.request("respond", msgs, it.sample) for it, _, _, _, msgs in plans]
        for (it, base, passage, drawn, msgs), comp in zip(
            plans, self.call(engine, "respond", reqs, sampling), strict=True
        ):
            rec = self.new_record(it, "respond", comp, engine, sampling)
            if self.opts.passage:
                add_usage(rec, questions[it.index][1])  # the question's tokens and step
            prompt = msgs[-1]["content"]
            response = comp.text.strip()
            rec.fields = {
                "instruction": prompt,
                "base_instruction": base,
                "response": response,
                "instruction_id_list": [c["id"] for c in drawn],
                "kwargs": [cat.full_kwargs(c["kwargs"]) for c in drawn],
                "constraint_passage": passage,
            }
            if not response:
                out.rejects.append(Reject(rec, "parse", "parse:empty"))
                continue
            rec.messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            out.kept.append(rec)
        return out

    def answer_task(self, fields: dict[str, Any]) -> AnswerTask | None:
        """RAG rows: the question is answered again from the passage (free text, by ROUGE-L), and
        the answer must be grounded in it."""
        if not fields.get("constraint_passage"):
            return None
        return AnswerTask(fields["base_instruction"], fields["response"], "text", fields["constraint_passage"],
                          grounded=True)  # fmt: skip

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        per = Counter(c for r in accepted for c in r.fields["instruction_id_list"])
        return {"constraints_accepted": dict(sorted(per.items()))}

    def card_section(self) -> str:
        return (
            "## Constraints\n\n"
            "- `instruction` is the prompt (IFEval's `prompt`); `instruction_id_list` and `kwargs` are in "
            "IFEval's format, so IFEval and lm-eval's `ifeval` checkers re-check `response` as is\n"
            "- `constraint_results`: one verdict per constraint (all true in the published rows)\n"
        )
