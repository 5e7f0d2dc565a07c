"""Ensemble-Instruct (Lee et al., 2023, "Ensemble-Instruct: Generating Instruction-Tuning Data with
a Heterogeneous Mixture of LMs"): several (smaller) models write instructions and instances, answer
each other's, and the output kept is the one they agree on.

With ``instructions: true`` (the default, as published) each item's task is written by one member
(round robin): an instruction, with an input for tasks of type A (seeds that have one) or without
for type B, and its output, from few-shot seed examples of the same type. The other members answer
the instruction and input zero-shot. The output ensemble is the paper's: if two outputs match
exactly (normalized), that output is kept; otherwise the output with the highest summed ROUGE-L
against the others, and the row is dropped when the worst pair's ROUGE-L is at most
``min_pair_rouge`` (0.01 in the paper; ``ensemble:outputs_disagree``). A task whose instruction
copies a seed's (ROUGE-L >= 0.7) is dropped (``parse:instruction_copies_seed``). The paper's
members are different models; here two members that are the same model need ``same_model: true``
(the shipped recipe, which has one embedded model, varies the temperature instead).
With ``instructions: false`` the members answer the seed instructions only (at most one row per seed).

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

Size: the paper's two stages (members write tasks, members answer and the outputs are ensembled)
and the math mode share the member plumbing; each function is short.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.answers import AnswerTask
from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, add_usage
from synthflow.mathcheck import equivalent
from synthflow.record import Reject, StageResult
from synthflow.registry import register
from synthflow.text import normalize

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
    instructions: bool = Field(
        True, description="members write the instructions and instances (as published)"
    )
    same_model: bool = Field(False, description="allow members that are the same model (varying temperature)")
    few_shot: int = Field(3, ge=1, le=8, description="seed examples per instruction-writing prompt")
    mode: Literal["rouge", "math"] = "rouge"
    min_pair_rouge: float = Field(0.01, ge=0, le=1, description="rouge mode: the worst pair must exceed this")
    min_agreement: float = Field(0.3, ge=0, le=1, description="math mode: share of members agreeing")
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


def instruction_input(data: dict[str, Any]) -> tuple[str, str]:
    """A seed's instruction and its first instance's input ('' when it has none)."""
    text = str(
        data.get("instruction") or data.get("problem") or data.get("question") or data.get("text") or ""
    )
    inst = (data.get("instances") or [{}])[0] if isinstance(data.get("instances"), list) else {}
    return text.strip(), str(inst.get("input") or data.get("input") or "").strip()


def join_input(instruction: str, inp: str | None) -> str:
    return f"{instruction}\n\n{inp}" if inp else instruction


_FIELD = re.compile(r"^(Instruction|Input|Output)\s*:\s*", re.M)


def parse_task(text: str, with_input: bool) -> dict[str, str] | str:
    """``<instruction>\nInput: ...\nOutput: ...`` (after the ``Instruction:`` prefill) -> the task,
    or the reason it does not parse. A second task, or a field given twice, ends the first."""
    fields: dict[str, str] = {}
    key, start = "instruction", 0
    for m in _FIELD.finditer(text):
        fields.setdefault(key, text[start : m.start()])
        key, start = m.group(1).lower(), m.end()
        if key in fields:
            break
    else:
        fields.setdefault(key, text[start:])
    instruction = " ".join(fields.get("instruction", "").split())
    output = fields.get("output", "").strip()
    inp = fields.get("input", "").strip()
    if not instruction:
        return "no_instruction"
    if not output:
        return "no_output"
    if with_input and not inp:
        return "no_input"
    return {"instruction": instruction, "input": inp if with_input else "", "output": output}


def seed_output(data: dict[str, Any]) -> str:
    inst = (data.get("instances") or [{}])[0] if isinstance(data.get("instances"), list) else {}
    return str(
        inst.get("output") or data.get("output") or data.get("response") or data.get("answer") or ""
    ).strip()


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
    seed_fields = ()  # a seed without an instruction is skipped (plan), not an error
    prompts: ClassVar[dict[str, str]] = {
        "answer": "ensemble/answer.jinja2",
        "math": "ensemble/math.jinja2",
        "instruct": "ensemble/instruct.jinja2",
    }
    Options = EnsembleOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "input": pa.string(),
        "response": pa.string(),
        "ens_writer": pa.string(),  # the member that wrote the task (instructions: true)
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
    seed_copy_rouge: ClassVar[float] = 0.7  # a written instruction this close to a seed's is a copy

    def answer_task(self, fields: dict[str, Any]) -> AnswerTask | None:
        """Math mode: the problem is solved again (a shared error of the members does not pass)."""
        if self.opts.mode != "math" or not fields.get("response"):
            return None
        return AnswerTask(fields["instruction"], fields["response"], "number",
                          hint='Reason step by step, then end with one line: "The answer is <number>."')  # fmt: skip

    def __init__(self, recipe: Any, seeds: list[Any], run_id: str = ""):
        super().__init__(recipe, [s for s in seeds if instruction_text(s.data)], run_id)
        self._seed_instructions = [instruction_input(s.data)[0] for s in self.seeds]
        self._seed_tasks = [
            {"instruction": i, "input": x, "output": seed_output(s.data)}
            for s in self.seeds
            for i, x in [instruction_input(s.data)]
            if seed_output(s.data)
        ]
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
            same = next((j for j, (_, e, _) in enumerate(self.members) if e.engine is eng.engine), None)
            if same is not None and not self.opts.same_model:
                raise UserError(
                    f"{where}: generator.options.members[{i}] is the same model as members[{same}]; "
                    "Ensemble-Instruct's members are different models (give it another engine or model, "
                    "or set same_model: true to vary only the sampling)"
                )
            label = m.label or f"{cfg.name}:{cfg.model}" + "".join(f"/{k}={v}" for k, v in over.items())
            self.members.append((label, eng, over))

    @property
    def role(self) -> str:
        return "math" if self.opts.mode == "math" else "answer"

    def context(self, item: Item) -> dict[str, Any]:
        return {"instruction": instruction_text(item.seed.data)}

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        ins = instruction_text(it.seed.data)
        out = [self.templates[r].render(instruction=ins) for r in ("answer", "math")]
        for with_input in (True, False):
            out.append(
                self.templates["instruct"].render(
                    examples=self._examples(it, with_input), with_input=with_input
                )
            )
        return out

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
    def _examples(self, item: Item, with_input: bool) -> list[dict[str, str]]:
        """Few-shot seed tasks of the item's type (with or without an input), drawn by item index."""
        pool = [d for d in self._seed_tasks if bool(d["input"]) == with_input] or self._seed_tasks
        rng = random.Random(f"{self.recipe.seed}:examples:{item.index}")
        return rng.sample(pool, min(self.opts.few_shot, len(pool)))

    def _write(
        self, items: list[Item], sampling: Sampling, out: StageResult
    ) -> list[tuple[Item, dict[str, Any]]]:
        """Each item's task, written by one member (round robin), one engine call per member."""
        tmpl = self.templates["instruct"]
        by_member: dict[int, list[Item]] = {}
        for it in items:
            by_member.setdefault(it.index % len(self.members), []).append(it)
        written: dict[int, tuple[Item, dict[str, Any]]] = {}
        for m, group in sorted(by_member.items()):
            label, eng, over = self.members[m]
            s = dataclasses.replace(sampling, **over) if over else sampling
            ctxs = [(it, bool(instruction_input(it.seed.data)[1])) for it in group]
            reqs = [self.request("instruct", tmpl.render(examples=self._examples(it, w), with_input=w), it.sample)
                    for it, w in ctxs]  # fmt: skip
            for (it, with_input), req, comp in zip(
                ctxs, reqs, self.call(eng, "instruct", reqs, s), strict=True
            ):
                task = parse_task(comp.text, with_input)
                if isinstance(task, str) or comp.finish_reason == "length":
                    rec = self.new_record(it, "instruct", comp, eng, sampling)
                    rec.raw = req.prefill + comp.text
                    why = "truncated:instruct" if comp.finish_reason == "length" else task
                    out.rejects.append(Reject(rec, "parse", f"parse:{why}"))
                    continue
                best = max((self._rouge.score(x, task["instruction"])["rougeL"].fmeasure
                            for x in self._seed_instructions), default=0.0)  # fmt: skip
                if best >= self.seed_copy_rouge:
                    rec = self.new_record(it, "instruct", comp, eng, sampling)
                    rec.raw = req.prefill + comp.text
                    out.rejects.append(Reject(rec, "parse", "parse:instruction_copies_seed"))
                    continue
                written[it.index] = (it, {**task, "writer": m, "completion": comp})
        return [written[it.index] for it in items if it.index in written]

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        if not self.members:
            raise RuntimeError("ensemble: bind_engines(pool, where) must run before generate")
        out = StageResult()
        if self.opts.instructions and self.opts.mode == "rouge":
            tasks = self._write(items, sampling, out)
        else:
            tasks = []
            for it in items:
                ins, inp = instruction_input(it.seed.data)
                tasks.append((it, {"instruction": ins, "input": inp, "writer": None}))
        if not tasks:
            return out
        tmpl = self.templates[self.role]
        prompts = [tmpl.render(instruction=join_input(t["instruction"], t["input"])) for _, t in tasks]
        answers: list[list[Any]] = [[None] * len(self.members) for _ in tasks]
        for m, (_label, eng, over) in enumerate(self.members):
            s = dataclasses.replace(sampling, **over) if over else sampling
            mine = [k for k, (_, t) in enumerate(tasks) if t["writer"] != m]
            reqs = [self.request(self.role, prompts[k], tasks[k][0].sample) for k in mine]
            for k, comp in zip(mine, self.call(eng, self.role, reqs, s), strict=True):
                answers[k][m] = comp
        labels = [m[0] for m in self.members]
        for k, (it, t) in enumerate(tasks):
            comps = answers[k]
            if t["writer"] is not None:
                comps[t["writer"]] = t["completion"]
            texts = [t["output"] if m == t["writer"] else c.text.strip() for m, c in enumerate(comps)]
            ins = join_input(t["instruction"], t["input"])
            ok = [self.candidate(ins, x, c.finish_reason) for x, c in zip(texts, comps, strict=True)]
            if self.opts.mode == "math":
                scores = self.agreement(texts, ok)
                best = max(range(len(texts)), key=lambda i: (ok[i], scores[i], -i))
                why = (
                    ""
                    if scores[best] >= self.opts.min_agreement
                    else (f"ensemble:low_agreement ({scores[best]:.2f}<{self.opts.min_agreement:g})")
                )
            else:
                best, scores, why = self.output_ensemble(texts, ok, prefer=t["writer"])
            chosen = best if best is not None else 0
            rec = self.new_record(it, self.role if t["writer"] is None else "instruct", comps[chosen],
                                  self.members[chosen][1], sampling)  # fmt: skip
            for i, c in enumerate(comps):
                if i != chosen:
                    add_usage(rec, c)
            rec.fields = {
                "instruction": t["instruction"],
                "input": t["input"] or None,
                "response": texts[chosen],
                "ens_writer": labels[t["writer"]] if t["writer"] is not None else None,
                "ens_engines": labels,
                "ens_outputs": texts,
                "ens_scores": scores,
                "ens_agreement": scores[chosen],
                "ens_chosen": labels[chosen],
            }
            if not ok[chosen]:
                out.rejects.append(Reject(rec, "generate", "ensemble:no_candidate"))
            elif why:
                out.rejects.append(Reject(rec, "generate", why))
            else:
                rec.messages = [
                    {"role": "user", "content": ins},
                    {"role": "assistant", "content": texts[chosen]},
                ]
                out.kept.append(rec)
        return out

    def output_ensemble(
        self, outputs: list[str], ok: list[bool], prefer: int | None = None
    ) -> tuple[int | None, list[float], str]:
        """The paper's output ensemble over the candidates: an exact (normalized) match between two
        outputs keeps that output (the writer's first); otherwise the output with the highest summed
        ROUGE-L against the others, unless the worst pair's ROUGE-L is at most ``min_pair_rouge``.
        Returns (chosen index or None, each output's mean ROUGE-L against the others, reject reason)."""
        idx = [i for i in range(len(outputs)) if ok[i]]
        scores = [0.0] * len(outputs)
        if len(idx) < 2:
            return (idx[0] if idx else None), scores, "ensemble:fewer_than_two_candidates"
        pair: dict[tuple[int, int], float] = {}
        for a in idx:
            for b in idx:
                if a < b:
                    pair[(a, b)] = self._rouge.score(outputs[a], outputs[b])["rougeL"].fmeasure
        for i in idx:
            scores[i] = round(sum(v for (a, b), v in pair.items() if i in (a, b)) / (len(idx) - 1), 4)
        norm = {i: normalize(outputs[i]) for i in idx}
        order = ([prefer] if prefer in idx else []) + [i for i in idx if i != prefer]
        for i in order:
            if any(norm[i] == norm[j] for j in idx if j != i):
                return i, scores, ""  # an exact match: the paper keeps it outright
        best = max(idx, key=lambda i: (scores[i], -i))
        worst = min(pair.values())
        if worst <= self.opts.min_pair_rouge:
            return (
                best,
                scores,
                f"ensemble:outputs_disagree (worst pair {worst:.2f}<={self.opts.min_pair_rouge:g})",
            )
        return best, scores, ""

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
