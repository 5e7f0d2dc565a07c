"""Self-Instruct (Wang et al., 2023, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions"): bootstrap new instructions from a pool of human-written seed tasks.

Per batch (one bootstrap round): each prompt shows 8 in-context instructions (6 human seeds and 2
machine-generated ones once there are some) and asks for new ones; new instructions are filtered
(ROUGE-L > 0.7 against the growing pool, 4-150 words, blacklisted keywords, punctuation or non-ASCII
start); the model says whether each is a classification task; instances are generated output-first
for classification and input-first otherwise, at most 5 per instruction. One row per instance.
"""

from __future__ import annotations

import copy
import random
import re
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.answers import AnswerTask
from synthflow.dedup.rouge import RougePool
from synthflow.engines.base import Sampling
from synthflow.generators.base import Generator, Item, add_usage
from synthflow.record import Record, Reject, StageResult, stable_id
from synthflow.registry import register
from synthflow.seeds import Seed

# Things a text-only model cannot do (the paper's list).
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")  # fmt: skip
_ITEM_RE = re.compile(r"^\s*(\d+)\s*[.)]\s*(.+?)\s*$")


def parse_instructions(text: str) -> list[str]:
    """The numbered list the model continued (its first line follows the prefilled number)."""
    lines = text.splitlines()
    out = []
    if lines and lines[0].strip():
        out.append(lines[0].strip())
    for line in lines[1:]:
        m = _ITEM_RE.match(line)
        if m:
            out.append(m.group(2))
        elif line.strip() and out and not line.strip()[0].isdigit():
            break  # prose after the list
    return [re.sub(r"\s+", " ", t).strip() for t in out if t.strip()]


def instruction_problem(text: str, min_words: int, max_words: int) -> str:
    """The paper's heuristic filters; '' when the instruction passes."""
    words = text.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    low = text.lower()
    for kw in BLACKLIST:
        if re.search(rf"\b{re.escape(kw)}\b", low):
            return f"keyword:{kw}"
    if not text[0].isascii():
        return "non_ascii_start"
    if not text[0].isalnum():
        return "punctuation_start"
    if low.startswith("write a program"):
        return "write_a_program"
    return ""


def parse_classification(text: str) -> bool | None:
    t = text.strip().lower()
    if t.startswith("yes"):
        return True
    if t.startswith("no"):
        return False
    return None


def parse_instances(text: str, output_first: bool, limit: int = 5) -> list[dict[str, str]]:
    """Input/Output pairs (input first), or Class label/Input pairs (output first), in order. A label
    is followed by spaces only, so an empty field stays empty instead of swallowing the next line."""
    a, b = ("Class label", "Input") if output_first else ("Input", "Output")
    first = a + ":" + text
    pat = re.compile(
        rf"{a}[ \t]*:[ \t]*(.*?)\n\s*{b}[ \t]*:[ \t]*(.*?)(?=\n\s*{a}[ \t]*:|\n\s*Task\s*:|\Z)", re.S
    )
    out = []
    for m in pat.finditer(first):
        x, y = m.group(1).strip(), m.group(2).strip()
        inp, outp = (y, x) if output_first else (x, y)
        out.append({"input": inp, "output": outp})
        if len(out) >= limit:
            break
    return out


def instance_filters(
    insts: list[dict[str, str]], output_first: bool = False
) -> tuple[list[dict[str, str]], list[tuple[int, str]]]:
    """The original's instance filters (prepare_for_finetuning.py): the same non-empty input with
    different outputs voids every instance of the task; an instance whose input equals its output,
    whose output is empty, or with a field ending in a colon (an unfinished generation) is dropped;
    exact repeats count once; a classification instance (output first) needs an input.
    Returns (kept, [(index, reason) of dropped])."""
    outs: dict[str, set[str]] = {}
    for x in insts:
        if x["input"]:
            outs.setdefault(x["input"], set()).add(x["output"])
    if any(len(v) > 1 for v in outs.values()):
        return [], [(i, "instance_conflict") for i in range(len(insts))]
    kept, dropped, seen = [], [], []
    for i, x in enumerate(insts):
        if not x["output"]:
            dropped.append((i, "instance_empty_output"))
        elif output_first and not x["input"]:
            dropped.append((i, "instance_empty_input"))
        elif x["input"] == x["output"]:
            dropped.append((i, "instance_input_equals_output"))
        elif x["input"].strip().endswith(":") or x["output"].strip().endswith(":"):
            dropped.append((i, "instance_ends_with_colon"))
        elif x in seen:
            dropped.append((i, "instance_repeated"))
        else:
            seen.append(x)
            kept.append(x)
    return kept, dropped


class SelfInstructOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    human_in_context: int = Field(6, ge=1)
    machine_in_context: int = Field(2, ge=0)
    new_per_prompt: int = Field(8, ge=1, le=20)
    rouge_threshold: float = Field(0.7, gt=0, le=1)
    min_words: int = Field(4, ge=1)
    max_words: int = Field(150, ge=1)
    max_instances: int = Field(5, ge=1)
    classify_examples: int = Field(6, ge=0)
    instance_examples: int = Field(2, ge=0)
    personas: str | None = None  # persona file (builtin:personas.jsonl): tasks a drawn persona would ask


@register("generator", "self_instruct")
class SelfInstruct(Generator):
    name = "self_instruct"
    seed_fields = ("instruction",)
    prompts: ClassVar[dict[str, str]] = {
        "instructions": "self_instruct/instructions.jinja2",
        "classify": "self_instruct/classify.jinja2",
        "input_first": "self_instruct/instances_input_first.jinja2",
        "output_first": "self_instruct/instances_output_first.jinja2",
    }
    persona_prompts: ClassVar[dict[str, str]] = {"instructions": "self_instruct/instructions_persona.jinja2"}
    Options = SelfInstructOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "input": pa.string(),
        "output": pa.string(),
        "si_round": pa.int64(),
        "si_in_context": pa.list_(pa.string()),
        "si_nearest": pa.string(),
        "si_rouge_l": pa.float64(),
        "si_is_classification": pa.bool_(),
        "si_labels": pa.list_(pa.string()),  # a classification task's labels (its instances' outputs)
        "si_instance": pa.int64(),
        "persona": pa.string(),
    }
    text_field = "instruction+input"
    response_field = "output"
    # the original's decoding: new instructions sampled; the yes/no and the instances greedy
    step_sampling: ClassVar[dict[str, dict[str, Any]]] = {
        "classify": {"temperature": 0.0, "max_tokens": 8},
        "input_first": {"temperature": 0.0, "max_tokens": 300},
        "output_first": {"temperature": 0.0, "max_tokens": 300},
    }
    # a list cut at max_tokens loses its last item (as the original discards it); the rest stands
    truncation_ok = frozenset({"instructions", "input_first", "output_first"})
    state_attrs = ("pool", "machine", "rounds", "classified")
    shardable = False  # each round's prompts sample the pool the earlier rounds grew

    def answer_task(self, fields: dict[str, Any]) -> AnswerTask | None:
        """Classification instances: the input is classified again (told the task's labels only when
        there are two or more, so the hint never gives the answer away)."""
        if not fields.get("si_is_classification") or not fields.get("output"):
            return None
        labels = tuple(fields.get("si_labels") or ())
        question = fields["instruction"] + (f"\n\n{fields['input']}" if fields.get("input") else "")
        hint = (
            f"Answer with one of: {', '.join(labels)}." if len(labels) >= 2 else "Answer with the label only."
        )
        return AnswerTask(
            question, fields["output"], "label", labels=labels if len(labels) >= 2 else (), hint=hint
        )

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        self.human = [s for s in seeds if s.data.get("instruction")]
        o = self.opts
        self.pool = RougePool(threshold=o.rouge_threshold)
        self.pool.add([s.seed_id for s in self.human], [s.data["instruction"] for s in self.human])
        self.machine: list[tuple[str, str]] = []  # (key, instruction) accepted into the pool
        self.rounds = 0
        self.classified = {"yes": 0, "no": 0, "unknown": 0}

    # ---- prompts ---------------------------------------------------------------------------
    def in_context(self, item: Item) -> tuple[list[str], list[str]]:
        o = self.opts
        rng = random.Random(f"{self.recipe.seed}:si:{item.index}")
        n_machine = min(o.machine_in_context, len(self.machine))
        human = rng.sample(
            self.human, min(o.human_in_context + o.machine_in_context - n_machine, len(self.human))
        )
        machine = rng.sample(self.machine, n_machine)
        pairs = [(s.seed_id, s.data["instruction"]) for s in human] + list(machine)
        rng.shuffle(pairs)  # machine instructions are not always last
        return [k for k, _ in pairs], [t for _, t in pairs]

    def render_instructions(self, item: Item, tasks: list[str]) -> list[dict[str, str]]:
        extra = {"persona": self.persona(item)} if self.personas else {}
        return self.templates["instructions"].render(tasks=tasks, num_new=self.opts.new_per_prompt, **extra)

    def _examples(self, key: str, n: int, classification: bool | None = None) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.recipe.seed}:{key}")
        pool = [
            s.data
            for s in self.human
            if classification is None or s.data["is_classification"] == classification
        ]
        pool = [p for p in pool if p.get("instances")] or [s.data for s in self.human]
        return rng.sample(pool, min(n, len(pool)))

    def _classify_examples(self, n: int) -> list[dict[str, Any]]:
        """Balanced yes/no examples, alternating, so the answer is not primed towards one label."""
        yes = self._examples("clf-yes", (n + 1) // 2, True)
        no = self._examples("clf-no", n // 2, False)
        out = []
        for i in range(max(len(yes), len(no))):
            out += [x[i] for x in ((no, yes) if i % 2 else (yes, no)) if i < len(x)]
        return out[:n]

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        _, tasks = self.in_context(it)
        ins = self.human[0].data["instruction"]
        return [
            self.render_instructions(it, tasks),
            self.templates["classify"].render(
                examples=self._classify_examples(self.opts.classify_examples), instruction=ins
            ),
            self.templates["input_first"].render(examples=self._examples("if", 2, False), instruction=ins),
            self.templates["output_first"].render(examples=self._examples("of", 2, True), instruction=ins),
        ]

    # ---- the bootstrap round --------------------------------------------------------------------
    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        o = self.opts
        out = StageResult()
        self.rounds += 1
        rnd = self.rounds
        # 1. new instructions, one prompt per item
        ctx = [self.in_context(it) for it in items]
        reqs = [
            self.request("instructions", self.render_instructions(it, t), it.sample)
            for it, (_, t) in zip(items, ctx, strict=True)
        ]
        comps = self.call(engine, "instructions", reqs, sampling)
        live: list[Record] = []
        for it, (ids, _), req, comp in zip(items, ctx, reqs, comps, strict=True):
            new = parse_instructions(comp.text)
            if comp.finish_reason == "length":
                new = new[:-1]  # the last instruction may be cut: the original discards it
            if not new:
                rec = self.new_record(it, "instructions", comp, engine, sampling)
                rec.raw = req.prefill + comp.text
                out.rejects.append(Reject(rec, "parse", "parse:no_instructions"))
                continue
            for j, ins in enumerate(new[: o.new_per_prompt]):
                rec = self.new_record(it, "instructions", comp, engine, sampling)
                rec.id = stable_id(rec.id, j)
                rec.raw = ins
                rec.fields = {"instruction": ins, "si_round": rnd, "si_in_context": ids,
                              "persona": self.persona(it)}  # fmt: skip
                problem = instruction_problem(ins, o.min_words, o.max_words)
                if problem:
                    out.rejects.append(Reject(rec, "generate", f"filter:{problem}"))
                    continue
                near = self.pool.check_and_add([rec.id], [ins])[0]
                rec.fields.update(si_nearest=near.text, si_rouge_l=round(near.rouge_l, 4))
                if near.rouge_l > o.rouge_threshold:
                    out.rejects.append(Reject(rec, "generate", f"filter:rouge_l>{o.rouge_threshold:g}"))
                    continue
                self.machine.append((rec.id, ins))
                live.append(rec)
        if not live:
            return out
        # 2. classification or not
        clf_ex = self._classify_examples(o.classify_examples)
        reqs = [
            self.request(
                "classify",
                self.templates["classify"].render(examples=clf_ex, instruction=r.fields["instruction"]),
                0,
            )
            for r in live
        ]
        for r, comp in zip(live, self.call(engine, "classify", reqs, sampling), strict=True):
            add_usage(r, comp)
            flag = parse_classification(comp.text)
            self.classified["unknown" if flag is None else ("yes" if flag else "no")] += 1
            r.fields["si_is_classification"] = bool(flag)
        # 3. instances: output-first for classification, input-first otherwise
        done: dict[int, tuple[Any, Any]] = {}
        for role, clf in (("output_first", True), ("input_first", False)):
            group = [r for r in live if r.fields["si_is_classification"] == clf]
            reqs = [
                self.request(
                    role,
                    self.templates[role].render(
                        examples=self._examples(role, o.instance_examples, clf),
                        instruction=r.fields["instruction"],
                    ),
                    0,
                )
                for r in group
            ]
            for r, req, comp in zip(group, reqs, self.call(engine, role, reqs, sampling), strict=True):
                done[id(r)] = (req, comp)
        for r in live:
            req, comp = done[id(r)]
            add_usage(r, comp)
            insts = parse_instances(comp.text, r.fields["si_is_classification"], o.max_instances + 1)
            if comp.finish_reason == "length":
                insts = insts[:-1]  # the last instance may be cut
            parsed = insts[: o.max_instances]
            insts, dropped = instance_filters(parsed, r.fields["si_is_classification"])
            for k, why in dropped:
                bad = copy.deepcopy(r)
                bad.id = stable_id(r.id, "dropped", k)
                bad.fields.update(input=parsed[k]["input"], output=parsed[k]["output"], si_instance=k)
                bad.raw = req.prefill + comp.text
                out.rejects.append(Reject(bad, "generate", f"filter:{why}"))
            if not insts:
                if not dropped:
                    r.raw = req.prefill + comp.text
                    out.rejects.append(Reject(r, "parse", "parse:no_instances"))
                continue
            labels = (
                sorted({i["output"].strip() for i in insts}) if r.fields["si_is_classification"] else None
            )
            for k, inst in enumerate(insts):
                row = copy.deepcopy(r)
                row.id = stable_id(r.id, "instance", k)
                row.fields.update(input=inst["input"], output=inst["output"], si_instance=k, si_labels=labels)
                row.raw = req.prefill + comp.text
                user = r.fields["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
                row.messages = [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": inst["output"]},
                ]
                out.kept.append(row)
        return out

    def summary(self, accepted: list[Record]) -> dict[str, Any]:
        return {
            "bootstrap rounds": self.rounds,
            "machine instructions in pool": len(self.machine),
            "classification answers": dict(self.classified),
            "accepted instructions": len({r.fields.get("instruction") for r in accepted}),
        }

    def card_section(self) -> str:
        return (
            "## Self-Instruct provenance\n\n"
            "- `si_round`: bootstrap round; `si_in_context`: ids of the 8 in-context instructions (seed ids or machine rows)\n"
            "- `si_nearest`, `si_rouge_l`: most similar pooled instruction and its ROUGE-L F1 when this one was added\n"
            "- `si_is_classification`: the model's answer (instances were made output-first when true)\n"
            "- `si_instance`: index of this instance among the instruction's instances (at most 5)\n"
        )
