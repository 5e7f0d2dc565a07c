"""CodeT-style code generation: the model writes a programming problem, several candidate solutions
and several tests; the ``codet`` verifier runs every candidate against every test and keeps the
solution of the best consensus set (dual execution agreement) with the tests it passes."""

from __future__ import annotations

import ast
import random
import re
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.generators.base import Generator, Item, ParseError, add_usage, parse_or_reject
from synthflow.record import Reject, StageResult
from synthflow.registry import register
from synthflow.seeds import Seed, jsonl_seeds

_PROBLEM_RE = re.compile(
    r"Problem\s*:\s*(.+?)\n\s*Signature\s*:\s*(def\s+([A-Za-z_]\w*)\s*\(.*?\)\s*(?:->\s*[^:\n]+)?:)",
    re.S | re.I,
)
_FENCE_END = re.compile(r"\n?```")


def parse_problem(text: str) -> dict[str, Any]:
    m = _PROBLEM_RE.search(text)
    if not m:
        raise ParseError("no_signature" if "problem" in text.lower() else "no_problem")
    problem = " ".join(m.group(1).split())
    if len(problem.split()) < 4:
        raise ParseError("problem_too_short")
    sig = m.group(2).strip()
    try:
        compile(sig + "\n    pass\n", "<sig>", "exec")
    except SyntaxError:
        raise ParseError("bad_signature") from None
    return {"problem": problem, "signature": sig, "entry_point": m.group(3)}


def parse_solution(prefill: str, text: str) -> str | None:
    """The fenced function the model completed (prefill = the signature line); None if it does not compile."""
    code = prefill.split("```python", 1)[-1].lstrip("\n") + text
    code = _FENCE_END.split(code, 1)[0].rstrip()
    try:
        compile(code, "<candidate>", "exec")
    except SyntaxError:
        return None
    return code


def normalized_ast(code: str) -> str:
    """The code's AST without docstrings, comments or formatting, and with the names each scope
    binds (a function's parameters and locals, a lambda's, a comprehension's) renamed in order of
    first appearance, scope by scope: equal for copies of a solution, including alpha-renamed ones
    (``def add(a, b): return a - b`` and ``def add(x, y): return x - y``), and different for
    programs that differ in which binding a name refers to (a lambda's own ``a`` is not the outer
    ``a``). Names read from outside (builtins, modules, other functions) keep their spelling."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    _Renamer().rename(tree, [])
    return ast.dump(tree, annotate_fields=False)


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _scope_locals(node: ast.AST) -> list[str]:
    """Names a function, lambda or comprehension binds itself, in order of first appearance."""
    out: list[str] = []
    if isinstance(node, _COMPS):
        for gen in node.generators:
            out += [x.id for x in ast.walk(gen.target) if isinstance(x, ast.Name)]
        return list(dict.fromkeys(out))
    args = node.args
    out += [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    out += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    body = node.body if isinstance(node.body, list) else [node.body]
    declared: set[str] = set()
    todo = list(reversed(body))
    while todo:
        x = todo.pop()
        if isinstance(x, (ast.Global, ast.Nonlocal)):
            declared |= set(x.names)
        elif isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store):
            out.append(x.id)
        elif isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(x.name)
            continue  # its body is its own scope
        if isinstance(x, (*_FUNCS, *_COMPS, ast.ClassDef)):
            continue
        todo += reversed(list(ast.iter_child_nodes(x)))
    return [n for n in dict.fromkeys(out) if n not in declared]


class _Renamer:
    def __init__(self) -> None:
        self.count = 0

    def rename(self, node: ast.AST, chain: list[dict[str, str]]) -> None:
        if isinstance(node, (*_FUNCS, *_COMPS)):
            outer = []  # evaluated in the enclosing scope: decorators, defaults, annotations
            if isinstance(node, _FUNCS):
                outer += list(getattr(node, "decorator_list", [])) + node.args.defaults
                outer += [d for d in node.args.kw_defaults if d is not None]
            for x in outer:
                self.rename(x, chain)
            mapping = {}
            for name in _scope_locals(node):
                mapping[name] = f"_v{self.count}"
                self.count += 1
            inner = [*chain, mapping]
            if isinstance(node, _FUNCS):
                for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                          node.args.kwarg]:  # fmt: skip
                    if a is not None:
                        a.arg = mapping.get(a.arg, a.arg)
                        a.annotation = None
                if not isinstance(node, ast.Lambda):
                    node.returns = None
                body = node.body if isinstance(node.body, list) else [node.body]
                for x in body:
                    self.rename(x, inner)
            else:
                for x in ast.iter_child_nodes(node):
                    self.rename(x, inner)
            return
        if isinstance(node, ast.Name):
            for m in reversed(chain):
                if node.id in m:
                    node.id = m[node.id]
                    break
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and chain:
            # a nested def's own name is a local of the enclosing scope
            for m in reversed(chain):
                if node.name in m:
                    node.name = m[node.name]
                    break
        for x in ast.iter_child_nodes(node):
            self.rename(x, chain)


def parse_tests(prefill: str, text: str, entry_point: str, limit: int) -> list[str]:
    """Distinct single-line asserts that call the entry point and compile."""
    body = prefill.split("```python", 1)[-1].lstrip("\n") + text
    body = _FENCE_END.split(body, 1)[0]
    out: list[str] = []
    for line in body.splitlines():
        line = line.strip()
        if not line.startswith("assert ") or f"{entry_point}(" not in line or line in out:
            continue
        try:
            compile(line, "<test>", "exec")
        except SyntaxError:
            continue
        out.append(line)
        if len(out) >= limit:
            break
    return out


class CodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidates: int = Field(4, ge=1, le=32, description="solutions sampled per problem")
    test_samples: int = Field(2, ge=1, le=16, description="test-writing samples per problem")
    max_tests: int = Field(8, ge=1, le=64, description="distinct tests kept per problem")
    few_shot: int = Field(2, ge=0, le=6)
    example_sets: int = Field(4, ge=1)
    examples: str = "builtin:code_seeds.jsonl"


@register("generator", "code_codet")
class CodeCodeT(Generator):
    name = "code_codet"
    seed_fields = ("topic", "text", "instruction", "problem")
    prompts: ClassVar[dict[str, str]] = {
        "problem": "code/problem.jinja2",
        "solve": "code/solve.jinja2",
        "tests": "code/tests.jinja2",
    }
    Options = CodeOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "problem": pa.string(),
        "signature": pa.string(),
        "entry_point": pa.string(),
        "candidates": pa.list_(pa.string()),
        "all_tests": pa.list_(pa.string()),
    }  # solution, tests and codet_* are the codet verifier's
    text_field = "problem+solution"
    message_fields = frozenset({"problem", "signature", "solution"})
    # a candidate or test sample cut at max_tokens does not compile and is dropped; the row stays
    truncation_ok = frozenset({"solve", "tests"})

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        self.example_pool = [s.data for s in jsonl_seeds(self.opts.examples) if s.data.get("solution")]

    def _examples(self, item: Item) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.recipe.seed}:{item.index % self.opts.example_sets}")
        return rng.sample(self.example_pool, min(self.opts.few_shot, len(self.example_pool)))

    def context(self, item: Item) -> dict[str, Any]:
        topic = item.seed.data.get("topic") or " ".join(item.seed.text.split()[:25])
        return {"examples": self._examples(item), "topic": topic}

    def _step_context(self, item: Item, fields: dict[str, Any]) -> dict[str, Any]:
        return {"examples": self._examples(item), **fields}

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        ex = self.example_pool[0]
        fields = {"problem": ex["problem"], "signature": ex["signature"], "entry_point": ex["entry_point"]}
        return [
            self.templates["problem"].render(**self.context(it)),
            self.templates["solve"].render(**self._step_context(it, fields)),
            self.templates["tests"].render(**self._step_context(it, fields)),
        ]

    def messages(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        return code_messages(fields)

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        from collections import Counter

        cons = Counter(r.fields.get("codet_consensus") for r in accepted)
        tests = Counter(r.fields.get("codet_tests_passed") for r in accepted)
        return {
            "codet consensus sizes (distinct candidates: rows)": ", ".join(
                f"{k}: {v}" for k, v in sorted(cons.items())
            )
            or "-",
            "codet tests passed (tests: rows)": ", ".join(f"{k}: {v}" for k, v in sorted(tests.items()))
            or "-",
        }

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        out = StageResult()
        # step 1: one problem per item, one call for the batch
        reqs = [
            self.request("problem", self.templates["problem"].render(**self.context(it)), it.sample)
            for it in items
        ]
        comps = self.call(engine, "problem", reqs, sampling)
        live = []
        for it, req, comp in zip(items, reqs, comps, strict=True):
            rec = self.new_record(it, "problem", comp, engine, sampling)
            rec.raw = req.prefill + comp.text
            fields = parse_or_reject(rec, parse_problem, rec.raw, out)
            if fields is not None:
                rec.fields = fields
                live.append((it, rec))
        if not live:
            return out
        # step 2: k candidate solutions per problem (one call), and a few test samples (one call)
        k, m = self.opts.candidates, self.opts.test_samples
        solve_reqs, solve_owner, test_reqs, test_owner = [], [], [], []
        for j, (it, rec) in enumerate(live):
            ctx = self._step_context(it, rec.fields)
            solve = self.templates["solve"].render(**ctx)
            tests = self.templates["tests"].render(**ctx)
            for c in range(k):
                solve_reqs.append(self.request("solve", solve, it.sample * k + c))
                solve_owner.append(j)
            for t in range(m):
                test_reqs.append(self.request("tests", tests, it.sample * m + t))
                test_owner.append(j)
        cands: dict[int, list[str]] = {}
        tests_: dict[int, list[str]] = {}
        for j, req, comp in zip(
            solve_owner, solve_reqs, self.call(engine, "solve", solve_reqs, sampling), strict=True
        ):
            add_usage(live[j][1], comp)
            # every sample is kept, copies too: the codet verifier groups them (normalized_ast) and
            # counts a group's samples as its weight, as CodeT does; distinct groups make a consensus
            if code := parse_solution(req.prefill, comp.text):
                cands.setdefault(j, []).append(code)
        for j, req, comp in zip(
            test_owner, test_reqs, self.call(engine, "tests", test_reqs, sampling), strict=True
        ):
            rec = live[j][1]
            add_usage(rec, comp)
            got = parse_tests(req.prefill, comp.text, rec.fields["entry_point"], self.opts.max_tests)
            merged = tests_.setdefault(j, [])
            merged += [t for t in got if t not in merged][: self.opts.max_tests - len(merged)]
        for j, (_it, rec) in enumerate(live):
            if not cands.get(j):
                out.rejects.append(Reject(rec, "parse", "parse:no_candidate_compiles"))
                continue
            if not tests_.get(j):
                out.rejects.append(Reject(rec, "parse", "parse:no_tests"))
                continue
            rec.fields.update(candidates=cands[j], all_tests=tests_[j])
            # the conversation with the first candidate until the verifier chooses the solution
            rec.messages = code_messages({**rec.fields, "solution": cands[j][0]})
            out.kept.append(rec)
        return out


def code_messages(f: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"{f['problem']}\nWrite the Python function `{f['signature']}`."},
        {"role": "assistant", "content": f"```python\n{f['solution']}\n```"},
    ]
