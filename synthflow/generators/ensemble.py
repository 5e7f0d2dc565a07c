"""Ensemble-Instruct (Lee et al., 2023, "Ensemble-Instruct: Generating Instruction-Tuning Data with
a Heterogeneous Mixture of LMs"): several (smaller) models answer every instruction, and the output
kept is the one the others agree with most.

The recipe names 2+ members: engines (the embedded model, any OpenAI-compatible endpoint, ...) or
the same engine with its own temperature and seed when only one model is at hand. Each member
answers the whole batch in one engine call. Agreement:

- ``rouge``: a member's output scores its mean ROUGE-L F1 against every other member's output;
- ``math``: the share of the other members whose final answer is the same number (math-verify).

The output with the highest agreement is kept if that agreement clears ``min_agreement``
(``generate`` rejects ``ensemble:low_agreement``). Outputs that cannot be right are not candidates and
count as disagreeing: empty ones, ones cut at max_tokens, ones that echo the instruction and, in
math mode, ones without a final answer. So two members that shirk the same way do not outvote the
rest by agreeing with each other.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, add_usage
from synthflow.mathcheck import equivalent
from synthflow.record import Reject, StageResult
from synthflow.registry import register

_ANSWER = re.compile(r"answer\s*(?:is|:)\s*\**\s*([-$]?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: dict[str, Any] | None = Field(
        None, description="engine fields over the recipe's engine (None: the same)"
    )
    temperature: float | None = Field(None, ge=0)
    seed: int | None = None
    label: str | None = None


class EnsembleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: list[Member] = Field(min_length=2)
    mode: Literal["rouge", "math"] = "rouge"
    min_agreement: float = Field(0.3, ge=0, le=1)
    echo_rouge: float = Field(
        0.8, gt=0, le=1, description="an output this close to the instruction is an echo"
    )


def final_answer(text: str) -> str | None:
    """``The answer is 42.`` (or the last number of the text's last line), else None."""
    m = _ANSWER.findall(text)
    if m:
        return m[-1].replace("$", "").replace(",", "").replace(" ", "")
    last = text.strip().splitlines()[-1] if text.strip() else ""
    nums = _NUMBER.findall(last)
    return nums[-1].replace(",", "") if nums else None


def instruction_text(data: dict[str, Any]) -> str:
    text = str(
        data.get("instruction") or data.get("problem") or data.get("question") or data.get("text") or ""
    )
    inst = (data.get("instances") or [{}])[0] if isinstance(data.get("instances"), list) else {}
    inp = str(inst.get("input") or data.get("input") or "").strip()
    return f"{text.strip()}\n\n{inp}" if inp else text.strip()


@register("generator", "ensemble")
class Ensemble(Generator):
    name = "ensemble"
    prompts: ClassVar[dict[str, str]] = {"answer": "ensemble/answer.jinja2", "math": "ensemble/math.jinja2"}
    Options = EnsembleOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "response": pa.string(),
        "ens_engines": pa.list_(pa.string()),
        "ens_outputs": pa.list_(pa.string()),
        "ens_scores": pa.list_(pa.float64()),
        "ens_agreement": pa.float64(),
        "ens_chosen": pa.string(),
    }
    text_field = "instruction"
    response_field = "response"
    # a member's output cut at max_tokens is never chosen (not a candidate), so the row stands
    truncation_ok = frozenset({"answer", "math"})

    def __init__(self, recipe: Any, seeds: list[Any], run_id: str = ""):
        super().__init__(recipe, [s for s in seeds if instruction_text(s.data)], run_id)
        from rouge_score import rouge_scorer

        self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.members: list[tuple[str, Any, dict[str, Any]]] = []  # (label, engine, sampling changes)

    def generation_engines(self) -> list[Any]:
        return [eng for _, eng, _ in self.members]  # one role (own counters) per member

    def bind_engines(self, pool: Any, where: str) -> None:
        """Each member's engine, by role ``ensemble_<i>`` (members with the recipe's engine share it)."""
        from synthflow.engines.pool import engine_identity
        from synthflow.recipe import EngineConfig
        from synthflow.registry import validate_model

        base = self.recipe.engine.model_dump()
        self.members = []
        seen: dict[Any, int] = {}
        for i, m in enumerate(self.opts.members):
            cfg = validate_model(
                EngineConfig, {**base, **(m.engine or {})}, f"{where}: generator.options.members[{i}].engine"
            )
            eng = pool.add(f"ensemble_{i}", cfg, where=f"generator.options.members[{i}].engine.name")
            if m.engine:
                eng.engine.preflight()
            over = {k: v for k, v in (("temperature", m.temperature), ("seed", m.seed)) if v is not None}
            key = (engine_identity(cfg), tuple(sorted(over.items())))
            if key in seen:  # it would answer as the other does (the response cache, greedy decoding)
                raise UserError(
                    f"{where}: generator.options.members[{i}] is members[{seen[key]}] again (same engine and "
                    "sampling): give it another engine or temperature"
                )
            seen[key] = i
            label = m.label or f"{cfg.name}:{cfg.model}" + "".join(f"/{k}={v}" for k, v in over.items())
            self.members.append((label, eng, over))

    @property
    def role(self) -> str:
        return "math" if self.opts.mode == "math" else "answer"

    def context(self, item: Item) -> dict[str, Any]:
        return {"instruction": instruction_text(item.seed.data)}

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        return [self.templates[r].render(**self.context(it)) for r in ("answer", "math")]

    # ---- agreement ------------------------------------------------------------------------------
    def candidate(self, instruction: str, text: str, finish: str) -> bool:
        if not text.strip() or finish == "length":
            return False
        if self._rouge.score(instruction, text)["rougeL"].fmeasure >= self.opts.echo_rouge:
            return False
        return self.opts.mode != "math" or final_answer(text) is not None

    def agreement(self, outputs: list[str], ok: list[bool]) -> list[float]:
        """Each output's agreement with the others (an output that is not a candidate agrees with none)."""
        n = len(outputs)
        scores = []
        for i in range(n):
            if not ok[i]:
                scores.append(0.0)
                continue
            total = 0.0
            for j in range(n):
                if j == i or not ok[j]:
                    continue
                if self.opts.mode == "math":
                    total += float(equivalent(final_answer(outputs[i]), final_answer(outputs[j])))
                else:
                    total += self._rouge.score(outputs[j], outputs[i])["rougeL"].fmeasure
            scores.append(round(total / (n - 1), 4))
        return scores

    # ---- the work ---------------------------------------------------------------------------------
    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        if not self.members:
            raise RuntimeError("ensemble: bind_engines(pool, where) must run before generate")
        tmpl = self.templates[self.role]
        prompts = [tmpl.render(**self.context(it)) for it in items]
        per_member = []
        for _label, eng, over in self.members:
            s = dataclasses.replace(sampling, **over) if over else sampling
            reqs = [self.request(self.role, p, it.sample) for it, p in zip(items, prompts, strict=True)]
            per_member.append(self.call(eng, self.role, reqs, s))
        out = StageResult()
        labels = [m[0] for m in self.members]
        for k, it in enumerate(items):
            comps = [pm[k] for pm in per_member]
            ins = instruction_text(it.seed.data)
            texts = [c.text.strip() for c in comps]
            ok = [self.candidate(ins, t, c.finish_reason) for t, c in zip(texts, comps, strict=True)]
            scores = self.agreement(texts, ok)
            best = max(range(len(texts)), key=lambda i: (ok[i], scores[i], -i))
            rec = self.new_record(it, self.role, comps[best], self.members[best][1], sampling)
            for i, c in enumerate(comps):
                if i != best:
                    add_usage(rec, c)
            rec.fields = {
                "instruction": ins,
                "response": texts[best],
                "ens_engines": labels,
                "ens_outputs": texts,
                "ens_scores": scores,
                "ens_agreement": scores[best],
                "ens_chosen": labels[best],
            }
            if not ok[best]:
                out.rejects.append(Reject(rec, "generate", "ensemble:no_candidate"))
            elif scores[best] < self.opts.min_agreement:
                out.rejects.append(
                    Reject(
                        rec,
                        "generate",
                        f"ensemble:low_agreement ({scores[best]:.2f}<{self.opts.min_agreement:g})",
                    )
                )
            else:
                rec.messages = [
                    {"role": "user", "content": ins},
                    {"role": "assistant", "content": texts[best]},
                ]
                out.kept.append(rec)
        return out

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        agr = sorted(r.fields["ens_agreement"] for r in accepted)
        return {
            "members": [m[0] for m in self.members],
            "chosen": dict(Counter(r.fields["ens_chosen"] for r in accepted)),
            "median_agreement": agr[len(agr) // 2] if agr else None,
        }

    def card_section(self) -> str:
        return (
            "## Ensemble provenance\n\n"
            "- `ens_engines`: the members; `ens_outputs`: each member's answer; `ens_scores`: each answer's agreement\n"
            "- `ens_chosen`: the member whose answer is the row's `response`; `ens_agreement`: its agreement\n"
        )
