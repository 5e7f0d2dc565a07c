"""PAL / program-of-thought math: a word problem, a Python ``solution()`` that computes the answer,
and the stated final answer. Verification runs the program and compares."""

from __future__ import annotations

import ast
import random
import re
from difflib import SequenceMatcher
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, ParseError, add_usage, parse_or_reject
from synthflow.prompts import load_prompt
from synthflow.record import Reject, StageResult
from synthflow.registry import register
from synthflow.seeds import Seed, jsonl_seeds
from synthflow.text import words
from synthflow.trivial import WORDS
from synthflow.trivial import _literals as literals

_PROBLEM_RE = re.compile(
    r"Problem\s*[:：]\s*(.+?)(?=\n\s*(?:Program\b|Solution\b|Code\b|```|def\s+solution\b|(?:Final\s+)?Answer\b)|\Z)",
    re.S | re.I,
)
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_ANSWER_RE = re.compile(r"(?:Final\s+)?Answer\s*[:：]\s*(.+)", re.I)
_NUMBER_RE = re.compile(r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+")


def clean_answer(s: str) -> str:
    """Keep the number (or fraction / percent) a stated answer leads with: ``$1,200.50 dollars`` -> ``1200.50``."""
    s = s.strip().strip("*").strip()
    m = _NUMBER_RE.search(s)
    if not m:
        return s.rstrip(".").strip()
    num = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    return num


def parse_pal(text: str) -> dict[str, Any]:
    """Tolerant parse of ``Problem: ... Program: ```python ...``` Answer: ...``."""
    if not text.strip():
        raise ParseError("empty")
    m = _PROBLEM_RE.search(text)
    if not m or not m.group(1).strip():
        raise ParseError("no_problem")
    problem = " ".join(m.group(1).split())
    rest = text[m.end() :]
    fm = _FENCE_RE.search(rest)
    if fm:
        program = fm.group(1)
        after = rest[fm.end() :]
    else:
        dm = re.search(r"^def solution\(.*?(?=^\s*(?:Final\s+)?Answer\b|\Z)", rest, re.S | re.M | re.I)
        if not dm:
            raise ParseError("no_program")
        program = dm.group(0)
        after = rest[dm.end() :]
    program = program.strip("\n").rstrip()
    if "def solution(" not in program:
        raise ParseError("no_solution_function")
    try:
        compile(program, "<program>", "exec")
    except SyntaxError:
        raise ParseError("program_syntax") from None
    am = _ANSWER_RE.search(after) or _ANSWER_RE.search(text)
    if not am or not am.group(1).strip():
        raise ParseError("no_answer")
    answer = clean_answer(am.group(1).splitlines()[0])
    if not answer:
        raise ParseError("no_answer")
    return {"problem": problem, "program": program, "answer": answer}


def reference_answer(answer: Any) -> str:
    """A seed's known answer: the number itself, or GSM8K's worked solution's ``#### 72``."""
    text = str(answer)
    return clean_answer(text.rsplit("####", 1)[1] if "####" in text else text)


def pal_messages(f: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f["problem"]},
        {"role": "assistant", "content": f"```python\n{f['program']}\n```\nThe answer is {f['answer']}."},
    ]


class MathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    few_shot: int = Field(2, ge=0, le=8, description="worked examples per prompt")
    example_sets: int = Field(
        4, ge=1, description="distinct few-shot sets; prompts sharing one share a prefix (vLLM prefix cache)"
    )
    examples: str = Field("builtin:math_seeds.jsonl", description="JSONL with topic/problem/program/answer")
    self_consistency: int = Field(
        0,
        ge=0,
        le=16,
        description="k more programs per problem, written without its answer in view; they vote (math_pot)",
    )
    personas: str | None = Field(
        None,
        description="persona file (builtin:personas.jsonl): each problem is one a drawn persona would pose",
    )
    persona_mode: Literal["pose", "rewrite"] = Field(
        "pose",
        description="pose: the persona poses a new problem (Persona Hub); rewrite: the persona restates the "
        "item's seed problem, numbers and question kept, and the seed's answer must come out (PersonaMath)",
    )
    rewrite_examples: str = Field(
        "builtin:math_persona_rewrites.jsonl",
        description="JSONL with persona/original/problem/program/answer: the rewrite template's worked examples",
    )


_TIME_RE = re.compile(r"\b(\d{1,2}):([0-5]\d)\b")
_SIGNED_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?|(?<![\w.])-?\.\d+")
_CLOCK_RE = re.compile(r"(?<![\w.])(\d{1,2}(?::[0-5]\d)?)\s*(?:am|pm|a\.m\.|p\.m\.|o'clock)", re.I)
# cardinal number words only: "half", "twice", "third" are operations, not numbers to keep
_CARDINALS = {
    w: v for w, v in WORDS.items() if w not in ("half", "twice", "double", "triple", "quarter", "third")
}


def numbers_in(text: str, clock: bool = True) -> set[float]:
    """The values of the numbers a problem states: digits (``1,200``, ``$3.50``, ``-5``, ``.25``),
    clock times as one value (``3:00`` = 3, ``2:15`` = 2.25) and cardinal words ("three", "dozen").
    ``clock=False`` leaves out times of day ("at 8 am"), which are setting, not data."""
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    if not clock:
        t = _CLOCK_RE.sub(" ", t)
    out = {round(int(h) + int(m) / 60, 9) for h, m in _TIME_RE.findall(t)}
    t = _TIME_RE.sub(" ", t)
    out |= {round(float(x), 9) for x in _SIGNED_RE.findall(t)}
    out |= {float(_CARDINALS[w]) for w in re.findall(r"[a-z]+", t.lower()) if w in _CARDINALS}
    return out


def _trigrams(ws: list[str]) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + 3]) for i in range(len(ws) - 2)}


def rewrite_problem_reason(
    original: str, problem: str, answer: str | None = None, max_similarity: float = 0.8
) -> str | None:
    """Why a persona rewrite does not count as one: it lost or changed a number of the original (then
    the original's answer is no reference for it; 0 and 1 may become words like "a"), it dropped the
    question, it gives away the answer (a number the original did not state), or it barely changed
    the wording (the same words, the original kept whole behind a preamble, or its sentences reordered)."""
    before, after = numbers_in(original), numbers_in(problem)
    if before - after - {0.0, 1.0}:
        return "rewrite_numbers_changed"
    if "?" in original and "?" not in problem:
        return "rewrite_no_question"
    if answer and (ans := numbers_in(answer)) and ans <= numbers_in(problem, clock=False) - before:
        return "rewrite_gives_answer"
    a, b = words(original.lower()), words(problem.lower())
    sm = SequenceMatcher(None, a, b, autojunk=False)
    kept = sum(m.size for m in sm.get_matching_blocks()) / max(len(a), 1)
    tri = _trigrams(a)
    shared = len(tri & _trigrams(b)) / len(tri) if tri else 0.0
    if sm.ratio() >= max_similarity or kept >= 0.9 or shared >= 0.6:
        return "rewrite_unchanged"
    return None


def rewrite_program_reason(original: str, program: str) -> str | None:
    """A rewrite keeps the original's numbers, so its program must use them: every number of the
    original but 0, 1 and 2 (and one more, say a time or a percent written another way) appears as
    a literal (a percent may appear as its fraction). This stops a program that computes the known
    answer from a hand-worked value or a number of the persona's ("in 2024")."""
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None  # the parser reports it
    lits = {round(v, 9) for v in literals(tree)}
    need = list(numbers_in(original) - {0.0, 1.0, 2.0})
    missing = [v for v in need if abs(v) not in lits and v not in lits and round(v / 100, 9) not in lits]
    return "rewrite_program_skips_numbers" if len(missing) > 1 or (missing and len(need) == 1) else None


@register("generator", "math_pal")
class MathPAL(Generator):
    name = "math_pal"
    seed_fields = ("topic", "text", "instruction", "problem")
    prompts: ClassVar[dict[str, str]] = {"generate": "math/pal.jinja2", "solve": "math/pal_solve.jinja2"}
    persona_prompts: ClassVar[dict[str, str]] = {"generate": "math/pal_persona.jinja2"}
    rewrite_prompt: ClassVar[str] = "math/pal_persona_rewrite.jinja2"  # persona_mode: rewrite
    Options = MathOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "problem": pa.string(),
        "program": pa.string(),
        "answer": pa.string(),
        "sc_programs": pa.list_(pa.string()),  # sc_votes, sc_majority, sc_agreement: the verifier's
        "persona": pa.string(),
        # persona rewrite (PersonaMath): the seed problem restated, and its known answer
        "source_problem": pa.string(),
        "reference_answer": pa.string(),
    }
    schemas: ClassVar[dict[str, dict[str, Any]]] = {
        "generate": {
            "type": "object",
            "properties": {
                "problem": {"type": "string"},
                "program": {"type": "string"},
                "answer": {"type": "string"},
            },
            "required": ["problem", "program", "answer"],
        }
    }
    text_field = "problem"
    # a self-consistency sample cut at max_tokens does not compile: it votes against, the row stays
    truncation_ok = frozenset({"solve"})

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        pool = [s for s in jsonl_seeds(self.opts.examples) if s.data.get("program") and s.data.get("problem")]
        self.example_pool = pool
        self.rewrite = self.opts.persona_mode == "rewrite"
        if self.rewrite:
            self._init_rewrite(recipe, seeds)

    def _init_rewrite(self, recipe: Any, seeds: list[Seed]) -> None:
        where = "generator.options.persona_mode"
        if not self.personas:
            raise UserError(f"{where}: rewrite needs generator.options.personas (who restates the problem)")
        for s in seeds:
            if not (str(s.data.get("problem") or "").strip() and str(s.data.get("answer") or "").strip()):
                raise UserError(
                    f"{where}: rewrite needs seeds with a `problem` and its `answer`; seed {s.seed_id!r} has "
                    f"{'no answer' if s.data.get('problem') else 'no problem'}"
                )
        if "generate" not in recipe.generator.prompts:  # the recipe did not name its own template
            self.templates["generate"] = load_prompt(self.rewrite_prompt)
        keys = ("persona", "original", "problem", "program", "answer")
        self.rewrite_pool = list(jsonl_seeds(self.opts.rewrite_examples))
        for e in self.rewrite_pool:
            if not all(str(e.data.get(k) or "").strip() for k in keys):
                raise UserError(f"generator.options.rewrite_examples: every line needs {', '.join(keys)}")

    def examples_for(self, index: int) -> list[dict[str, Any]]:
        """Few-shot examples: one of ``example_sets`` fixed sets, so prompts share prefixes."""
        rng = random.Random(f"{self.recipe.seed}:{index % self.opts.example_sets}")
        pool = self.rewrite_pool if self.rewrite else self.example_pool
        return [e.data for e in rng.sample(pool, min(self.opts.few_shot, len(pool)))]

    def context(self, item: Item) -> dict[str, Any]:
        # a shipped/user topic, or for a raw document chunk its opening words
        topic = item.seed.data.get("topic") or " ".join(item.seed.text.split()[:25])
        ctx = {"examples": self.examples_for(item.index), "topic": topic}
        if self.personas:
            ctx["persona"] = self.persona(item)
        if self.rewrite:
            ctx["original"] = item.seed.data["problem"]
        return ctx

    def source_fields(self, item: Item) -> dict[str, Any]:
        """What every row and reject keeps of its item: the persona and, for a rewrite, the original."""
        f: dict[str, Any] = {"persona": self.persona(item)}
        if self.rewrite:
            f["source_problem"] = item.seed.data["problem"]
            f["reference_answer"] = reference_answer(item.seed.data["answer"])
        return f

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        return [
            self.templates["generate"].render(**self.context(it)),
            self.templates["solve"].render(
                examples=self.examples_for(0), problem=self.example_pool[0].data["problem"]
            ),
        ]

    def parse(self, text: str) -> dict[str, Any]:
        if self.structured:
            import json

            try:
                obj = json.loads(text)
            except ValueError:
                raise ParseError("invalid_json") from None
            text = f"Problem: {obj.get('problem', '')}\n```python\n{obj.get('program', '')}\n```\nAnswer: {obj.get('answer', '')}"
        return parse_pal(text)

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        tmpl = self.templates["generate"]
        reqs = [self.request("generate", tmpl.render(**self.context(it)), it.sample) for it in items]
        comps = self.call(engine, "generate", reqs, sampling)
        out = StageResult()
        for it, req, comp in zip(items, reqs, comps, strict=True):
            rec = self.new_record(it, "generate", comp, engine, sampling)
            rec.raw = req.prefill + comp.text
            src = self.source_fields(it)
            rec.fields = dict(src)  # rejects keep it too
            fields = parse_or_reject(rec, self.parse, rec.raw, out)
            if fields is None:
                continue
            rec.fields = {**fields, **src}
            if self.rewrite and (
                why := rewrite_problem_reason(
                    src["source_problem"], fields["problem"], src["reference_answer"]
                )
                or rewrite_program_reason(src["source_problem"], fields["program"])
            ):
                out.rejects.append(Reject(rec, "parse", f"parse:{why}"))
                continue
            rec.messages = pal_messages(fields)
            out.kept.append(rec)
        if self.opts.self_consistency and out.kept:
            self._sample_programs(out.kept, engine, sampling)
        return out

    def _sample_programs(self, recs: list[Any], engine: Any, sampling: Sampling) -> None:
        """Self-consistency: k more programs per problem, in one engine call for the batch."""
        k = self.opts.self_consistency
        tmpl = self.templates["solve"]
        reqs, owner = [], []
        for r in recs:
            msgs = tmpl.render(examples=self.examples_for(r.item), problem=r.fields["problem"])
            for c in range(k):
                reqs.append(self.request("solve", msgs, c))
                owner.append(r)
        for r in recs:
            r.fields["sc_programs"] = []
        for r, _req, comp in zip(owner, reqs, self.call(engine, "solve", reqs, sampling), strict=True):
            add_usage(r, comp)
            code = ("def solution():" + comp.text).split("```", 1)[0].rstrip()
            try:
                compile(code, "<sc>", "exec")
            except SyntaxError:
                code = None  # a sample that does not compile still counts: as a vote against
            r.fields["sc_programs"].append(code)

    # ---- revision: the checker's reason and error in view, a new program (and answer) ------------
    revise_prompt = "revise/math.jinja2"
    response_field = "program"

    def revision_context(self, rec: Any) -> dict[str, Any]:
        f = rec.fields
        return {
            "problem": f.get("problem", ""),
            "program": f.get("program", ""),
            "answer": f.get("answer", ""),
        }

    def apply_revision(self, rec: Any, text: str) -> None:
        got = self.parse(text)
        if got["program"].strip() == (rec.fields.get("program") or "").strip():
            raise ParseError("unchanged")
        rec.fields.update(got, sc_programs=[])
        rec.messages = pal_messages(got)

    def after_revision(self, recs: list[Any], engine: Any, sampling: Sampling) -> None:
        if self.opts.self_consistency and recs:  # revised problems get their own votes
            self._sample_programs(recs, engine, sampling)

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        k = self.opts.self_consistency
        if not k:
            return {}
        agr = [r.fields["sc_agreement"] for r in accepted if r.fields.get("sc_agreement") is not None]
        majority = sum(1 for a in agr if a > 0.5)
        return {
            "self_consistency": f"k={k}: {majority} of {len(accepted)} accepted rows had a majority of the "
            f"samples for their answer"
            + (f" (median agreement {sorted(agr)[len(agr) // 2]:g})" if agr else ""),
            "sc": {"k": k, "majority_rows": majority, "accepted": len(accepted), "agreement": agr},
        }
