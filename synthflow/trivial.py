"""Does a PAL program compute its answer from the problem, or only state it?

A program that returns a literal (``return 42``), a constant expression (``return 12 * 4``), a
variable holding only constants, or a value that does not depend on any number of the problem
agrees with any stated answer it was written next to: verification would call it correct without
it solving anything. ``trivial_reason`` names the first such sign, or returns ''.

The check is static (the AST, no execution): a value depends on the problem when it is computed
from a literal that is one of the problem's numbers (digits, percentages as fractions too, and
number words such as "three" or "dozen"), or from a variable that does, through assignments,
loops and function arguments. It is a filter on obvious shortcuts, not a proof of correctness.
"""

from __future__ import annotations

import ast
import re

_NUM = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?%?")
WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "dozen": 12, "half": 2, "twice": 2, "double": 2,
    "triple": 3, "quarter": 4, "third": 3,
}  # fmt: skip
SMALL = {0.0, 1.0, 2.0}


def problem_numbers(problem: str) -> set[float]:
    out: set[float] = set()
    for m in _NUM.finditer(problem):
        tok = m.group(0).replace(",", "")
        pct = tok.endswith("%")
        try:
            v = float(tok.rstrip("%"))
        except ValueError:
            continue
        out.add(v)
        if pct:
            out.add(v / 100)
    for w in re.findall(r"[a-z]+", problem.lower()):
        if w in WORDS:
            out.add(float(WORDS[w]))
    return out


def _literal(node: ast.AST) -> float | None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    return None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _literals(node: ast.AST) -> set[float]:
    return {v for n in ast.walk(node) if (v := _literal(n)) is not None}


def _constant_only(node: ast.AST) -> bool:
    """Literals and operators only: no names, calls, attributes or subscripts."""
    return all(
        isinstance(
            n,
            (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.Tuple, ast.List, ast.Load),
        )
        for n in ast.walk(node)
    )


def _targets(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _flows(fn: ast.AST) -> list[tuple[set[str], ast.AST]]:
    """(names written, expression read) for every binding in the function."""
    out: list[tuple[set[str], ast.AST]] = []
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign):
            names: set[str] = set()
            for t in n.targets:
                names |= _targets(t)
            out.append((names, n.value))
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign)) and n.value is not None:
            out.append((_targets(n.target), n.value))
        elif isinstance(n, (ast.For, ast.comprehension)):
            out.append((_targets(n.target), n.iter))
        elif isinstance(n, ast.NamedExpr):
            out.append((_targets(n.target), n.value))
    return out


def trivial_reason(problem: str, program: str, answer: object = None) -> str:
    try:
        return _trivial_reason(problem, program, answer)
    except (RecursionError, MemoryError):
        return "too_complex"  # deeper than the checks can read: not accepted unread


def _trivial_reason(problem: str, program: str, answer: object = None) -> str:
    from synthflow.sandbox.policy import module_def

    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return ""  # the verifier reports the error itself
    fn = module_def(tree, "solution")  # also inside ``if``/``try`` at module level
    if fn is None:
        return ""  # no def: the policy refuses it (verify:rebound_entry_point)
    returns = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]
    if not returns:
        return ""
    if any(_constant_only(v) for v in returns):
        return "literal_return"
    flows = _flows(fn)
    # a variable that only ever holds constants is a literal in disguise
    constant_vars: dict[str, bool] = {}
    for names, expr in flows:
        for name in names:
            constant_vars[name] = constant_vars.get(name, True) and _constant_only(expr)
    for v in returns:
        if isinstance(v, ast.Name) and constant_vars.get(v.id):
            return "literal_return"
    nums = problem_numbers(problem)
    if not nums:
        # "What is the maximum number of pickers ...?" with `pickers = 2; weeks = 2; return
        # pickers * weeks`: a problem that states no quantity gives the program nothing to compute from
        return "no_numbers_in_problem"
    if nums - SMALL:
        # taint: what is computed from the problem's numbers (fixpoint over the bindings); a
        # parameter is only as tainted as its default (``def solution(extra=29)`` states 29)
        defaults = fn.args.defaults
        params = fn.args.args[len(fn.args.args) - len(defaults) :]
        flows = flows + [({p.arg}, d) for p, d in zip(params, defaults, strict=True)]
        flows += [
            ({p.arg}, d)
            for p, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True)
            if d is not None
        ]
        tainted: set[str] = set()
        changed = True
        while changed:
            changed = False
            for names, expr in flows:
                if names - tainted and (_literals(expr) & nums or _names(expr) & tainted):
                    tainted |= names
                    changed = True
        if not any(_literals(v) & nums or _names(v) & tainted for v in returns):
            return "ignores_problem_numbers"
    try:
        stated = float(str(answer).replace(",", "").rstrip("%")) if answer is not None else None
    except ValueError:
        stated = None
    if stated is not None and stated not in nums and stated not in SMALL and stated in _literals(fn):
        return "hardcoded_answer"  # the stated answer is written into the program, not computed
    return ""


def _perturbed(value: int | float, i: int, variant: int) -> int | float:
    """Another value for a problem number: distinct offsets per number (so ratios move too)."""
    if variant == 0:
        return value + (i + 1) if isinstance(value, int) else value + 0.5 * (i + 1)
    return value * 2 + 1 if isinstance(value, int) else value * 1.75


def perturbations(problem: str, program: str, variants: int = 2) -> list[str]:
    """The program with every number literal that is one of the problem's numbers changed
    (``variants`` different ways). A program that computes its answer from the problem gives another
    value on at least one of them; one that states its answer (``return 29 + 1 + 0 * boxes``, a
    helper returning 30) gives the same. [] when the program uses none of the problem's numbers."""
    try:
        return _perturbations(problem, program, variants)
    except (RecursionError, MemoryError):
        return []  # trivial_reason refuses such a program first


def _perturbations(problem: str, program: str, variants: int) -> list[str]:
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return []
    # 0, 1 and 2 are too common as plain constants (``+ 1``, ``/ 2``) to stand for the problem
    nums = problem_numbers(problem) - SMALL
    found = sorted({float(v) for n in ast.walk(tree) if (v := _literal(n)) is not None and float(v) in nums})
    if not found:
        return []
    index = {v: i for i, v in enumerate(found)}
    out = []
    for variant in range(variants):

        class Swap(ast.NodeTransformer):
            def visit_Constant(self, node: ast.Constant, variant: int = variant) -> ast.AST:
                v = _literal(node)
                if v is None or v not in index:
                    return node
                new = _perturbed(node.value, index[v], variant)
                return ast.copy_location(ast.Constant(new), node)

        out.append(ast.unparse(Swap().visit(ast.parse(program))))
    return out
