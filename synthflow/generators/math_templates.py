"""Math variants in the TemplateGSM / InfinityMATH way (Zhang et al., 2024, "Training and Evaluating
Language Models with Template-based Data Generation"; Zhang et al., 2024, "InfinityMATH").

The model writes a parameterized problem template: the text with {variables}, a type and range per
variable, and ``solution(**variables)``. Each template is instantiated with many sampled number
assignments; the ``template`` verifier runs the program for every variant in the sandbox, so the
answers are correct by construction, and rejects templates whose program fails or whose answers are
degenerate. Every variant records ``template_id``; the split (train/test) is decided per template.
"""

from __future__ import annotations

import ast
import json
import random
import re
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.generators.base import Generator, Item, ParseError, parse_or_reject
from synthflow.record import StageResult, stable_id
from synthflow.registry import register
from synthflow.seeds import Seed, jsonl_seeds

_VAR_RE = re.compile(
    r"^\s*([A-Za-z_]\w*)\s*:\s*(int|integer|float|decimal)\s+(-?\d+(?:\.\d+)?)\s*(?:-|to|\.\.)\s*(-?\d+(?:\.\d+)?)\s*$",
    re.I,
)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


def parse_template(text: str) -> dict[str, Any]:
    """``<template>\\nVariables:\\n a: int 1-9 ...\\nProgram: ```python def solution(a, ...)```"""
    head, sep, rest = text.partition("Variables:")
    if not sep:
        raise ParseError("no_variables")
    template = " ".join(head.strip().split())
    if not template:
        raise ParseError("no_template")
    var_block, sep, prog_part = rest.partition("Program:")
    if not sep:
        raise ParseError("no_program")
    variables: dict[str, list[Any]] = {}
    for line in var_block.splitlines():
        m = _VAR_RE.match(line)
        if m:
            kind = "int" if m.group(2).lower().startswith("int") else "float"
            lo, hi = float(m.group(3)), float(m.group(4))
            if kind == "int":
                lo, hi = int(lo), int(hi)
            if lo > hi:
                lo, hi = hi, lo
            variables[m.group(1)] = [kind, lo, hi]
    if not variables:
        raise ParseError("no_variables")
    fm = _FENCE_RE.search(prog_part)
    program = (fm.group(1) if fm else prog_part).strip("\n").rstrip()
    try:
        tree = ast.parse(program)
    except SyntaxError:
        raise ParseError("program_syntax") from None
    fn = next((n for n in tree.body if getattr(n, "name", None) == "solution"), None)
    if fn is None:
        raise ParseError("no_solution_function")
    params = [a.arg for a in fn.args.args]
    used = set(_PLACEHOLDER.findall(template))
    if not used:
        raise ParseError("no_placeholders")
    if used != set(variables) or set(params) != set(variables):
        raise ParseError("variables_mismatch")
    return {"template": template, "variables": variables, "program": program}


def sample_assignments(variables: dict[str, list[Any]], n: int, seed: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = {}
        for name, (kind, lo, hi) in sorted(variables.items()):
            a[name] = (
                rng.randint(int(lo), int(hi))
                if kind == "int"
                else round(rng.uniform(float(lo), float(hi)), 2)
            )
        out.append(a)
    return out


def fill(template: str, assignment: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(assignment[m.group(1)]), template)


class TemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variants_per_template: int = Field(8, ge=1, le=1000)
    few_shot: int = Field(2, ge=0, le=6)
    example_sets: int = Field(4, ge=1)
    examples: str = "builtin:math_templates.jsonl"
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of templates (not variants) held out as test"
    )


@register("generator", "math_templates")
class MathTemplates(Generator):
    name = "math_templates"
    prompts: ClassVar[dict[str, str]] = {"template": "math_templates/template.jinja2"}
    Options = TemplateOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "template_id": pa.string(),
        "template": pa.string(),
        "variables": pa.string(),
        "assignment": pa.string(),
        "problem": pa.string(),
        "program": pa.string(),
        "answer": pa.string(),
    }  # `split` is a core column of every row (train/test), filled from fields["split"]
    text_field = "problem"

    def __init__(self, recipe: Any, seeds: list[Seed]):
        super().__init__(recipe, seeds)
        self.example_pool = [s.data for s in jsonl_seeds(self.opts.examples)]
        self.templates_made = 0

    def context(self, item: Item) -> dict[str, Any]:
        rng = random.Random(f"{self.recipe.seed}:{item.index % self.opts.example_sets}")
        examples = rng.sample(self.example_pool, min(self.opts.few_shot, len(self.example_pool)))
        return {
            "examples": examples,
            "topic": item.seed.data.get("topic") or " ".join(item.seed.text.split()[:20]),
        }

    def split_of(self, template_id: str) -> str:
        return "test" if int(template_id[:8], 16) % 1000 < self.opts.test_fraction * 1000 else "train"

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        tmpl = self.templates["template"]
        reqs = [self.request("template", tmpl.render(**self.context(it)), it.sample) for it in items]
        out = StageResult()
        for it, req, comp in zip(items, reqs, engine.generate(reqs, sampling), strict=True):
            rec = self.new_record(it, "template", comp, engine, sampling)
            rec.raw = req.prefill + comp.text
            f = parse_or_reject(rec, parse_template, comp.text, out)
            if f is None:
                continue
            self.templates_made += 1
            tid = stable_id(rec.id, f["template"])
            for k, a in enumerate(sample_assignments(f["variables"], self.opts.variants_per_template, tid)):
                v = self.new_record(it, "template", comp, engine, sampling)
                v.id = stable_id(tid, k)
                v.raw = rec.raw
                v.fields = {
                    "template_id": tid,
                    "template": f["template"],
                    "variables": json.dumps(f["variables"]),
                    "assignment": json.dumps(a, sort_keys=True),
                    "problem": fill(f["template"], a),
                    "program": f["program"],
                    "split": self.split_of(tid),
                }
                out.kept.append(v)
        return out

    def refresh(self, rec: Any) -> None:
        """After verification the answer is known: build the training conversation."""
        f = rec.fields
        a = json.loads(f["assignment"])
        call = ", ".join(f"{k}={v!r}" for k, v in sorted(a.items()))
        rec.messages = [
            {"role": "user", "content": f["problem"]},
            {
                "role": "assistant",
                "content": f"```python\n{f['program']}\n\nprint(solution({call}))\n```\nThe answer is {f['answer']}.",
            },
        ]

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        ids = {r.fields["template_id"] for r in accepted}
        test = {r.fields["template_id"] for r in accepted if r.fields.get("split") == "test"}
        return {
            "templates written": self.templates_made,
            "templates accepted": len(ids),
            "test templates": len(test),
        }

    def card_section(self) -> str:
        return (
            "## Template provenance\n\n"
            "- `template_id`, `template`, `variables` (JSON: name -> [type, low, high]), `assignment` (JSON)\n"
            "- `answer` was computed by executing `program` on the assignment in the sandbox\n"
            "- `split`: decided per template, so train and test never share a template\n"
        )
