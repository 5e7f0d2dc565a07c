"""Math variants in the TemplateGSM / InfinityMATH way (Zhang et al., 2024, "Training and Evaluating
Language Models with Template-based Data Generation"; Zhang et al., 2024, "InfinityMATH").

The model writes a parameterized problem template: the text with {variables}, a type and range per
variable, constraints the variables must meet (``b < a``, ``a % b == 0``), ``solution(**variables)``,
and a natural-language solution whose computed numbers are ``{formulas}`` over the variables. Each
template is instantiated with sampled number assignments; an assignment that breaks a constraint is
drawn again (up to ``max_resample`` times). The ``template`` verifier runs the program for every
variant in the sandbox, so the answers are correct by construction; it rejects variants whose
program fails, whose answer is degenerate or (for "how many" questions) not a whole number, or whose
worded solution ends on another number, and whole templates only when most variants fail or every
variant has the same answer. Constraints and formulas are evaluated by ``synthflow.safe_expr``,
never ``eval``. Every variant records ``template_id``; the split is decided per template.
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
from synthflow.record import Reject, StageResult, stable_id
from synthflow.registry import register
from synthflow.safe_expr import ExprError, compile_expr, evaluate
from synthflow.seeds import Seed, jsonl_seeds

_VAR_RE = re.compile(
    r"^\s*[-*]?\s*\{?([A-Za-z_]\w*)\}?\s*(?::|=|\()\s*(int|integer|float|decimal)\)?\s*[:,]?\s*(?:from\s+|between\s+)?"
    r"(-?\d+(?:\.\d+)?)\s*(?:-|to|\.\.|and)\s*(-?\d+(?:\.\d+)?)\s*\.?\s*$",
    re.I,
)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_FORMULA = re.compile(r"\{([^{}]+)\}")
_SECTION = re.compile(r"^\s*(Constraints|Program|Solution)\s*:", re.M | re.I)


def _sections(rest: str) -> dict[str, str]:
    """The text after ``Variables:``, cut at the ``Constraints:``, ``Program:`` and ``Solution:`` labels."""
    marks = list(_SECTION.finditer(rest))
    out = {"variables": rest[: marks[0].start()] if marks else rest}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(rest)
        out.setdefault(m.group(1).lower(), rest[m.end() : end])
    return out


def parse_template(text: str) -> dict[str, Any]:
    """``<template>\\nVariables:\\n a: int 1-9 ...\\n[Constraints: ...]\\nProgram: ```python def
    solution(a, ...)```\\n[Solution: ... {formulas} ...]``"""
    head, sep, rest = text.partition("Variables:")
    if not sep:
        raise ParseError("no_variables")
    template = " ".join(head.strip().split())
    if not template:
        raise ParseError("no_template")
    parts = _sections(rest)
    if "program" not in parts:
        raise ParseError("no_program")
    variables: dict[str, list[Any]] = {}
    for line in parts["variables"].splitlines():
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
    fm = _FENCE_RE.search(parts["program"])
    program = (fm.group(1) if fm else parts["program"]).strip("\n").rstrip()
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
    # every number in the text is a declared variable and the program takes exactly those; a declared
    # variable the text never uses is dropped
    if not used <= set(variables) or set(params) != used:
        raise ParseError("variables_mismatch")
    variables = {k: v for k, v in variables.items() if k in used}
    constraints = []
    for line in (parts.get("constraints") or "").splitlines():
        line = line.strip().lstrip("-*").strip()
        if not line or line.lower() in ("none", "no constraints"):
            continue
        try:
            compile_expr(line, variables)
        except ExprError:
            raise ParseError("bad_constraint") from None
        constraints.append(line)
    solution = " ".join((parts.get("solution") or "").split())
    if solution:
        try:
            for f in _FORMULA.findall(solution):
                compile_expr(f, variables)
        except ExprError:
            raise ParseError("bad_solution_formula") from None
    return {
        "template": template,
        "variables": variables,
        "constraints": constraints,
        "program": program,
        "solution": solution,
    }


def satisfies(constraints: list[str], assignment: dict[str, Any]) -> bool:
    try:
        return all(bool(evaluate(compile_expr(c, assignment), assignment)) for c in constraints)
    except ExprError:
        return False


def sample_assignments(
    variables: dict[str, list[Any]], n: int, seed: str, constraints: list[str] | None = None, tries: int = 50
) -> list[dict[str, Any]]:
    """Up to ``n`` assignments meeting every constraint; each variant is drawn again up to ``tries``
    times, and one that never meets them is left out."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        for _ in range(tries):
            a = {}
            for name, (kind, lo, hi) in sorted(variables.items()):
                a[name] = (
                    rng.randint(int(lo), int(hi))
                    if kind == "int"
                    else round(rng.uniform(float(lo), float(hi)), 2)
                )
            if satisfies(constraints or [], a):
                out.append(a)
                break
    return out


def fill(template: str, assignment: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(assignment[m.group(1)]), template)


def render_solution(solution: str, assignment: dict[str, Any]) -> str:
    """The worded solution with every ``{formula}`` computed for this assignment."""

    def value(m: re.Match[str]) -> str:
        v = evaluate(compile_expr(m.group(1), assignment), assignment)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(round(v, 6) if isinstance(v, float) else v)

    return _FORMULA.sub(value, solution)


class TemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variants_per_template: int = Field(8, ge=1, le=1000)
    few_shot: int = Field(2, ge=0, le=6)
    example_sets: int = Field(4, ge=1)
    examples: str = "builtin:math_templates.jsonl"
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of templates (not variants) held out as test"
    )
    max_resample: int = Field(50, ge=1, description="draws per variant until its constraints hold")


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
        "constraints": pa.list_(pa.string()),
        "solution": pa.string(),
    }  # `answer` is the template verifier's; `split` is a core column of every row (train/test), filled from fields["split"]
    text_field = "problem"
    message_fields = frozenset({"problem", "program", "assignment", "solution", "answer"})
    state_attrs = ("templates_made",)

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
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
        for it, req, comp in zip(items, reqs, self.call(engine, "template", reqs, sampling), strict=True):
            rec = self.new_record(it, "template", comp, engine, sampling)
            rec.raw = req.prefill + comp.text
            f = parse_or_reject(rec, parse_template, comp.text, out)
            if f is None:
                continue
            self.templates_made += 1
            # from the item and the template, not the run id: the split of a template is the same in
            # every run (a random run id made it chance whether a test split existed at all)
            tid = stable_id(self.recipe.name, self.recipe.seed, it.index, f["template"])
            drawn = sample_assignments(
                f["variables"], self.opts.variants_per_template, tid, f["constraints"], self.opts.max_resample
            )
            if not drawn:
                out.rejects.append(Reject(rec, "parse", "parse:constraints_unsatisfiable"))
                continue
            for k, a in enumerate(drawn):
                v = self.new_record(it, "template", comp, engine, sampling)
                v.id = stable_id(tid, k)
                v.raw = rec.raw
                v.fields = {
                    "template_id": tid,
                    "template": f["template"],
                    "variables": json.dumps(f["variables"]),
                    "constraints": f["constraints"],
                    "assignment": json.dumps(a, sort_keys=True),
                    "problem": fill(f["template"], a),
                    "program": f["program"],
                    "split": self.split_of(tid),
                }
                if f["solution"]:
                    try:
                        v.fields["solution"] = render_solution(f["solution"], a)
                    except ExprError:
                        out.rejects.append(Reject(v, "parse", "parse:solution_formula_fails"))
                        continue
                out.kept.append(v)
        return out

    def messages(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        """Once verification knows the answer: the training conversation."""
        f = fields
        a = json.loads(f["assignment"])
        call = ", ".join(f"{k}={v!r}" for k, v in sorted(a.items()))
        words = f"{f['solution']}\n\n" if f.get("solution") else ""
        return [
            {"role": "user", "content": f["problem"]},
            {
                "role": "assistant",
                "content": f"{words}```python\n{f['program']}\n\nprint(solution({call}))\n```\nThe answer is {f['answer']}.",
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
            "- `template_id`, `template`, `variables` (JSON: name -> [type, low, high]), `constraints`, `assignment` (JSON)\n"
            "- `answer` was computed by executing `program` on the assignment in the sandbox\n"
            "- `solution`: the worded solution, its formulas computed for the assignment; its last number is the answer (checked)\n"
            "- `split`: decided per template, so train and test never share a template\n"
        )
