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

Anchored (``anchor: true``, the shipped recipe; InfinityMATH): each template is written from a seed
problem with a known answer (GSM8K train). The model also gives the seed's own values, and the
template is kept only if it is that problem: its numbers are the seed's numbers, the template filled
with them reads as the seed problem, the seed's values meet the constraints, and (in the verifier)
the program run on them returns the seed's known answer (``verify:seed_answer_mismatch``). Names,
items and places are variables too (``name: name`` draws a person's name, ``item: one of apples,
pears``), so variants differ in more than numbers, and every number variable must be used by the
program (``parse:unused_variable``).

Size: two modes (topic templates and templates anchored to seed problems) share the parser, the
sampler and the checks; each function is short.
"""

from __future__ import annotations

import ast
import difflib
import json
import random
import re
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, ParseError, parse_or_reject
from synthflow.prompts import load_prompt
from synthflow.record import Reject, StageResult, stable_id
from synthflow.registry import register
from synthflow.safe_expr import ExprError, compile_expr, evaluate
from synthflow.seeds import Seed, jsonl_seeds
from synthflow.text import normalize

_VAR_RE = re.compile(
    r"^\s*[-*]?\s*\{?([A-Za-z_]\w*)\}?\s*(?::|=|\()\s*(int|integer|float|decimal)\)?\s*[:,]?\s*(?:from\s+|between\s+)?"
    r"(-?\d+(?:\.\d+)?)\s*(?:-|to|\.\.|and)\s*(-?\d+(?:\.\d+)?)\s*\.?\s*$",
    re.I,
)
_WORD_VAR_RE = re.compile(
    r"^\s*[-*]?\s*\{?([A-Za-z_]\w*)\}?\s*:\s*(?:(name|person)\b.*|one\s+of\s*:?\s*(.+?))\s*\.?\s*$", re.I
)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_FORMULA = re.compile(r"\{([^{}]+)\}")
_SECTION = re.compile(r"^\s*(Seed values|Constraints|Program|Solution)\s*:", re.M | re.I)
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
# first names for ``name`` variables: varied by origin, so variants differ in who the problem is about
NAMES = (
    "Aisha", "Ben", "Carmen", "Dmitri", "Emeka", "Fatima", "Greta", "Hiroshi", "Ines", "Jamal", "Kofi",
    "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor",
    "Wen", "Ximena", "Yusuf", "Zara", "Anika", "Bruno", "Chen", "Dalia", "Elena", "Farid", "Gabriel",
    "Hana", "Ivan", "Jana", "Kwame", "Lucia", "Mohammed", "Nora", "Omar", "Paula", "Rahul", "Sofia",
    "Tomas", "Yara", "Amara", "Diego", "Mei", "Sipho",
)  # fmt: skip


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
    words: dict[str, list[str]] = {}  # word variables: name -> choices (empty: a person's name)
    for line in parts["variables"].splitlines():
        w = _WORD_VAR_RE.match(line)
        if w:
            words[w.group(1)] = [] if w.group(2) else [c.strip() for c in w.group(3).split(",") if c.strip()]
            continue
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
    placed = set(_PLACEHOLDER.findall(template))
    words = {k: v for k, v in words.items() if k in placed}
    used = placed - set(words)
    if not used:
        raise ParseError("no_placeholders")
    # every number in the text is a declared variable and the program takes exactly those; a declared
    # variable the text never uses is dropped
    if not used <= set(variables) or set(params) != used:
        raise ParseError("variables_mismatch")
    variables = {k: v for k, v in variables.items() if k in used}
    read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for name in params:
        if name not in read:  # a number the answer does not depend on
            raise ParseError(f"unused_variable:{name}")
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
                if f.strip() not in words:
                    compile_expr(f, variables)
        except ExprError:
            raise ParseError("bad_solution_formula") from None
    seed_values: dict[str, Any] = {}
    for part in re.split(r"[,;\n]", parts.get("seed values") or ""):
        k, eq, v = part.partition("=")
        if eq and k.strip():
            v = v.strip().strip("'\"")
            key = k.strip().strip("{}")
            if key in variables:
                try:
                    num = float(v.replace(",", "").lstrip("$"))
                except ValueError:
                    raise ParseError("bad_seed_values") from None
                seed_values[key] = int(num) if variables[key][0] == "int" and num.is_integer() else num
            elif key in words:
                seed_values[key] = v
    return {
        "template": template,
        "variables": variables,
        "words": words,
        "constraints": constraints,
        "program": program,
        "solution": solution,
        "seed_values": seed_values,
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


def draw_words(words: dict[str, list[str]], n: int, seed: str) -> list[dict[str, str]]:
    """For each of ``n`` variants, a value per word variable: a person's name (different names
    across variants while there are enough) or one of the template's choices."""
    rng = random.Random(f"words:{seed}")
    out: list[dict[str, str]] = [{} for _ in range(n)]
    taken: set[str] = set()
    for name, choices in sorted(words.items()):
        pool = list(choices) or [x for x in NAMES if x not in taken]
        picks = rng.sample(pool, n) if len(pool) >= n else [rng.choice(pool) for _ in range(n)]
        for k in range(n):
            out[k][name] = picks[k]
        if not choices:
            taken.update(picks)  # two name variables never draw the same person
    return out


def fill(template: str, assignment: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(assignment[m.group(1)]), template)


def render_solution(solution: str, assignment: dict[str, Any]) -> str:
    """The worded solution with every ``{formula}`` computed for this assignment."""

    def value(m: re.Match[str]) -> str:
        if isinstance(assignment.get(m.group(1).strip()), str):
            return assignment[m.group(1).strip()]  # a name, item or place
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
    anchor: bool = Field(
        False,
        description="write each template from a seed problem with a known answer (seeds with problem "
        "and answer, e.g. source: gsm8k); the template must reproduce the seed and its answer",
    )
    min_seed_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="anchored: how closely the template filled with the seed's values reads as the seed",
    )


@register("generator", "math_templates")
class MathTemplates(Generator):
    name = "math_templates"
    seed_fields = ("topic", "text", "instruction", "problem")
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
        "wording": pa.string(),  # JSON: the names, items and places this variant drew
        "seed_problem": pa.string(),  # anchored: the seed problem the template was written from
        "seed_answer": pa.string(),  # anchored: its known answer, which the program must reproduce
        "seed_values": pa.string(),  # anchored: JSON, the seed's values of the number variables
    }  # `answer` is the template verifier's; `split` is a core column of every row (train/test), filled from fields["split"]
    text_field = "problem"
    message_fields = frozenset({"problem", "program", "assignment", "solution", "answer"})
    state_attrs = ("templates_made",)
    anchored_prompt: ClassVar[str] = "math_templates/anchored.jinja2"
    anchored_examples: ClassVar[str] = "builtin:math_templates_anchored.jsonl"

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        examples = self.opts.examples
        if self.opts.anchor:
            missing = next((s for s in seeds if not (s.data.get("problem") and s.data.get("answer"))), None)
            if missing is not None:
                raise UserError(
                    f"generator.options.anchor: seed {missing.seed_id} has no problem and answer; anchored "
                    "templates need seeds with known answers (e.g. seeds: [{source: gsm8k}])"
                )
            if "template" not in recipe.generator.prompts:
                self.templates["template"] = load_prompt(self.anchored_prompt)
            if examples == TemplateOptions.model_fields["examples"].default:
                examples = self.anchored_examples
        self.example_pool = [s.data for s in jsonl_seeds(examples)]
        self.templates_made = 0

    def context(self, item: Item) -> dict[str, Any]:
        rng = random.Random(f"{self.recipe.seed}:{item.index % self.opts.example_sets}")
        examples = rng.sample(self.example_pool, min(self.opts.few_shot, len(self.example_pool)))
        if self.opts.anchor:
            return {"examples": examples, "seed": item.seed.data}
        return {
            "examples": examples,
            "topic": item.seed.data.get("topic") or " ".join(item.seed.text.split()[:20]),
        }

    def check_anchor(self, f: dict[str, Any], seed: dict[str, Any]) -> None:
        """The template is the seed problem: the seed's values are given for every variable, its
        numbers are exactly the seed's, filled in it reads as the seed, and they meet the constraints."""
        values = f["seed_values"]
        if set(values) != set(f["variables"]) | set(f["words"]):
            raise ParseError("no_seed_values")
        in_seed = sorted(float(x.replace(",", "")) for x in _NUMBER.findall(seed["problem"]))
        ours = sorted(float(values[k]) for k in f["variables"])
        if in_seed != ours:
            raise ParseError("seed_values_mismatch")  # a number of the seed left out, or one made up
        filled = normalize(fill(f["template"], values)).split()
        if (
            difflib.SequenceMatcher(None, filled, normalize(seed["problem"]).split()).ratio()
            < self.opts.min_seed_similarity
        ):
            raise ParseError("template_not_from_seed")
        if not satisfies(f["constraints"], {k: values[k] for k in f["variables"]}):
            raise ParseError("seed_breaks_constraints")

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
            if self.opts.anchor:
                try:
                    self.check_anchor(f, it.seed.data)
                except ParseError as e:
                    out.rejects.append(Reject(rec, "parse", f"parse:{e}"))
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
            wording = draw_words(f["words"], len(drawn), tid)
            for k, (a, w) in enumerate(zip(drawn, wording, strict=True)):
                v = self.new_record(it, "template", comp, engine, sampling)
                # the row's id is the run's (rec.id has the run id): a row of another run with the
                # same template is a duplicate, not this row resumed
                v.id = stable_id(rec.id, k)
                v.raw = rec.raw
                v.fields = {
                    "template_id": tid,
                    "template": f["template"],
                    "variables": json.dumps(
                        {**f["variables"], **{n: ["word", c] for n, c in f["words"].items()}}
                    ),
                    "constraints": f["constraints"],
                    "assignment": json.dumps(a, sort_keys=True),
                    "wording": json.dumps(w, sort_keys=True) if w else None,
                    "problem": fill(f["template"], {**a, **w}),
                    "program": f["program"],
                    "split": self.split_of(tid),
                }
                if self.opts.anchor:
                    v.fields["seed_problem"] = it.seed.data["problem"]
                    v.fields["seed_answer"] = str(it.seed.data["answer"])
                    v.fields["seed_values"] = json.dumps(
                        {n: f["seed_values"][n] for n in f["variables"]}, sort_keys=True
                    )
                if f["solution"]:
                    try:
                        v.fields["solution"] = render_solution(f["solution"], {**a, **w})
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
