"""The trusted side of verification: test code decomposed into calls and comparisons.

A test such as ``assert add(2, 3) == 5`` becomes the call ``add(2, 3)``, which the program's
sandboxed process evaluates and reports as plain data, and the comparison ``== 5``, which runs here,
in the host, on that plain data: a program cannot reach it, and an object whose ``__eq__`` always
says True never leaves the sandbox (only plain data does). Expected values that are not literals
(``2.0 / 3``, ``sorted([3, 1])``) are computed in a separate, clean sandboxed process that never
loads the program.

Decomposable asserts (each side checked with ``ast``):
- ``CALL op EXPECTED`` with op in ==, !=, <, <=, >, >=, is, is not, in, not in (either order);
- ``abs(CALL - X) < tol`` (or <=), ``math.isclose(CALL, X, ...)``, ``CALL``, ``not CALL``;
- ``tuple(CALL)``, ``list(CALL)``, ``sorted(CALL)``, ``set(CALL)``, ``len(CALL)`` and ``round(CALL, n)``
  around the call are applied here too;
- ``assert True`` and a HumanEval-style ``def check(candidate)`` whose body is such asserts.
CALL is a call of a function the program defines (or ``candidate``) whose arguments use only
literals and a few pure builtins; EXPECTED uses no program name. Anything else cannot be decomposed
and runs in driver mode (``harness.run_driver``): trusted only when the test code itself is.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

# names a clean expression may use: pure builtins and math
SAFE_NAMES = frozenset(
    [
        "abs",
        "all",
        "any",
        "bool",
        "bytes",
        "complex",
        "dict",
        "divmod",
        "float",
        "frozenset",
        "int",
        "len",
        "list",
        "max",
        "min",
        "pow",
        "range",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
        "True",
        "False",
        "None",
        "math",
    ]
)
WRAPPERS = {"tuple": tuple, "list": list, "sorted": sorted, "set": set, "len": len, "frozenset": frozenset}
_OPS: dict[type, Any] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FLIP = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}


@dataclass
class Assertion:
    src: str  # the assert, for messages
    call: int | None  # index into Plan.calls (None: no program call, e.g. ``assert True``)
    kind: str = "cmp"  # cmp | truthy | falsy | abs | isclose | const
    op: Any = None  # for cmp: a function (value, expected) -> bool; for abs: '<' or '<='
    reverse: bool = False  # cmp: the call was on the right (``5 == f(2)``, ``x in f()``)
    wrapper: str | None = None  # tuple/list/sorted/set/len/frozenset, or round:<n>
    expected: int | None = None  # index into Plan.expected
    tol: int | None = None  # abs: index into Plan.expected
    isclose_kw: dict[str, int] = field(default_factory=dict)  # isclose: kwarg -> index into expected


@dataclass
class Plan:
    calls: list[str]  # call expressions the program's process evaluates
    expected: list[str]  # clean expressions evaluated apart from the program (literals here)
    asserts: list[Assertion]


class NotDecomposable(ValueError):
    pass


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _clean(node: ast.AST) -> bool:
    """No program name, no attribute other than ``math.x``, no lambda or comprehension."""
    for n in ast.walk(node):
        if isinstance(
            n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr)
        ):
            return False
        if isinstance(n, ast.Attribute) and not (isinstance(n.value, ast.Name) and n.value.id == "math"):
            return False
        if isinstance(n, ast.Name) and n.id not in SAFE_NAMES:
            return False
        if isinstance(n, ast.Starred):
            return False
    return True


_ODD_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


class _Source:
    """Source text of a node by its offsets (``ast.get_source_segment`` without re-splitting the
    source each time; ``ast.unparse`` where lines break in unusual ways)."""

    def __init__(self, text: str):
        self.lines = None if any(c in text for c in _ODD_BREAKS) else [ln.encode() for ln in text.split("\n")]

    def __call__(self, node: ast.AST) -> str:
        lines = self.lines
        end_lineno, end_col = getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None)
        if lines is None or end_lineno is None or end_col is None:
            return ast.unparse(node)
        first, col = node.lineno - 1, node.col_offset
        if first == end_lineno - 1:
            return lines[first][col:end_col].decode()
        parts = [lines[first][col:], *lines[first + 1 : end_lineno - 1], lines[end_lineno - 1][:end_col]]
        return b"\n".join(parts).decode()


class _Builder:
    def __init__(self, program_names: set[str], source: _Source):
        self.program = program_names | {"candidate"}
        self.plan = Plan([], [], [])
        self.src = source

    def call(self, node: ast.AST) -> int:
        """A direct call of a program function with clean arguments."""
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in self.program
            and all(_clean(a) for a in node.args)
            and all(kw.arg is not None and _clean(kw.value) for kw in node.keywords)
        ):
            raise NotDecomposable(self.src(node))
        self.plan.calls.append(self.src(node))
        return len(self.plan.calls) - 1

    def expected(self, node: ast.AST) -> int:
        if not _clean(node):
            raise NotDecomposable(self.src(node))
        self.plan.expected.append(self.src(node))
        return len(self.plan.expected) - 1

    def dirty(self, node: ast.AST) -> bool:
        return bool(_names(node) & self.program)

    def core(self, node: ast.AST) -> tuple[int, str | None]:
        """The call, possibly inside one wrapper applied on this side."""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in WRAPPERS
            and len(node.args) == 1
            and not node.keywords
        ):
            return self.call(node.args[0]), node.func.id
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "round"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
            and type(node.args[1].value) is int
        ):
            return self.call(node.args[0]), f"round:{node.args[1].value}"
        return self.call(node), None

    def add(self, stmt: ast.Assert) -> None:
        t, src = stmt.test, self.src(stmt)
        a: Assertion
        if not self.dirty(t):
            if isinstance(t, ast.Constant) and t.value:
                a = Assertion(src, None, "const")
            else:
                raise NotDecomposable(src)  # an assert that does not test the program
        elif isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            i, w = self.core(t.operand)
            a = Assertion(src, i, "falsy", wrapper=w)
        elif isinstance(t, ast.Compare) and len(t.ops) == 1:
            left, right, op = t.left, t.comparators[0], type(t.ops[0])
            if (
                op in (ast.Lt, ast.LtE)
                and isinstance(left, ast.Call)
                and isinstance(left.func, ast.Name)
                and left.func.id == "abs"
                and len(left.args) == 1
                and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)
            ):
                diff = left.args[0]
                if self.dirty(diff.left) and not self.dirty(diff.right):
                    i, w = self.core(diff.left)
                    x = self.expected(diff.right)
                elif self.dirty(diff.right) and not self.dirty(diff.left):
                    i, w = self.core(diff.right)
                    x = self.expected(diff.left)
                else:
                    raise NotDecomposable(src)
                a = Assertion(src, i, "abs", op="<" if op is ast.Lt else "<=", wrapper=w, expected=x)
                a.tol = self.expected(right)
            elif self.dirty(left) and not self.dirty(right):
                i, w = self.core(left)
                a = Assertion(src, i, "cmp", op=_OPS[op], wrapper=w, expected=self.expected(right))
            elif self.dirty(right) and not self.dirty(left):
                i, w = self.core(right)
                if op in _FLIP:
                    a = Assertion(src, i, "cmp", op=_OPS[_FLIP[op]], wrapper=w, expected=self.expected(left))
                else:  # ==, !=, is, is not are symmetric; in / not in keep the order
                    a = Assertion(
                        src, i, "cmp", op=_OPS[op], reverse=True, wrapper=w, expected=self.expected(left)
                    )
            else:
                raise NotDecomposable(src)
        elif (
            isinstance(t, ast.Call)
            and isinstance(t.func, ast.Attribute)
            and isinstance(t.func.value, ast.Name)
            and t.func.value.id == "math"
            and t.func.attr == "isclose"
            and len(t.args) == 2
        ):
            d0, d1 = self.dirty(t.args[0]), self.dirty(t.args[1])
            if d0 == d1:
                raise NotDecomposable(src)
            call_node, exp_node = (t.args[0], t.args[1]) if d0 else (t.args[1], t.args[0])
            i, w = self.core(call_node)
            a = Assertion(src, i, "isclose", wrapper=w, expected=self.expected(exp_node))
            for kw in t.keywords:
                if kw.arg not in ("rel_tol", "abs_tol"):
                    raise NotDecomposable(src)
                a.isclose_kw[kw.arg] = self.expected(kw.value)
        else:
            i, w = self.core(t)
            a = Assertion(src, i, "truthy", wrapper=w)
        self.plan.asserts.append(a)


def decompose(tests: str, program_names: set[str], entry_point: str | None = None) -> Plan:
    """The test code as calls and comparisons; NotDecomposable when it is anything more."""
    try:
        tree = ast.parse(tests)
    except SyntaxError as e:
        raise NotDecomposable(f"syntax: {e}") from None
    b = _Builder(set(program_names) | ({entry_point} if entry_point else set()), _Source(tests))
    body = list(tree.body)
    check = next((n for n in body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is not None:
        if not entry_point:
            raise NotDecomposable("check() without an entry point")
        rest = [n for n in body if n is not check]
        if any(not _is_metadata(n) for n in rest):
            raise NotDecomposable("statements beside check()")
        if [a.arg for a in check.args.args] != ["candidate"]:
            raise NotDecomposable("check() takes something other than candidate")
        body = check.body
    stmts = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not stmts:
        raise NotDecomposable("no asserts")
    for s in stmts:
        if not isinstance(s, ast.Assert):
            raise NotDecomposable(b.src(s)[:80])
        b.add(s)
    return b.plan


def _is_metadata(n: ast.AST) -> bool:
    return (
        isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id == "METADATA"
    ) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))


def literal(src: str) -> tuple[bool, Any]:
    """(True, value) when the expression is a literal, evaluated here without running anything."""
    try:
        return True, ast.literal_eval(src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _wrap(value: Any, wrapper: str | None) -> Any:
    if wrapper is None:
        return value
    if wrapper.startswith("round:"):
        return round(value, int(wrapper.split(":", 1)[1]))
    return WRAPPERS[wrapper](value)


def judge(plan: Plan, results: list[tuple], expected: list[Any]) -> tuple[str, str, str]:
    """(status, exc_type, message): the first assert that fails decides. ``results`` are the
    program's call results, ``("ok", value)`` or ``("exc", type, message)``."""
    for a in plan.asserts:
        if a.kind == "const":
            continue
        r = results[a.call]
        if r[0] != "ok":
            status = "timeout" if r[1] == "Timeout" else "memory" if r[1] == "MemoryError" else "error"
            return status, r[1], f"{r[2]} (in {plan.calls[a.call]})"
        try:
            v = _wrap(r[1], a.wrapper)
            if a.kind == "truthy":
                ok = bool(v)
            elif a.kind == "falsy":
                ok = not v
            elif a.kind == "abs":
                d = abs(v - expected[a.expected])
                ok = d < expected[a.tol] if a.op == "<" else d <= expected[a.tol]
            elif a.kind == "isclose":
                kw = {k: expected[i] for k, i in a.isclose_kw.items()}
                ok = math.isclose(v, expected[a.expected], **kw)
            else:
                e = expected[a.expected]
                ok = a.op(e, v) if a.reverse else a.op(v, e)
        except Exception as ex:  # noqa: BLE001 - plain data that does not compare is a failure
            return "fail", "AssertionError", f"{a.src}: {type(ex).__name__}: {str(ex)[:100]}"
        if not ok:
            return "fail", "AssertionError", f"{a.src[:200]} (got {_short(v)})"
    return "pass", "", ""


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


_STRONG_OPS = (_OPS[ast.Eq], _OPS[ast.Is])


def counts_as_test(test: str, entry_point: str | None) -> bool:
    """Does a generated test check the function under test? It must decompose into asserts, and one
    of them must call ``entry_point`` and compare the result for equality (``==``, ``is``, or within a
    tolerance: ``abs(f(x) - y) < tol``, ``math.isclose``). ``assert "add(1, 2) == 3"``,
    ``assert True, "add(1, 2)"``, ``assert add(1, 1) != 5`` or ``assert add(1, 2)`` do not count:
    almost any program passes them, and neither does a tolerance over 1e-3 (relative beyond 1)."""
    if not entry_point:
        return False
    try:
        plan = decompose(test, {entry_point}, entry_point)
    except (NotDecomposable, RecursionError, MemoryError):
        return False
    for a in plan.asserts:
        if a.call is None:
            continue
        called = plan.calls[a.call].split("(", 1)[0].strip()
        if called not in (entry_point, "candidate"):
            continue
        if (a.kind == "cmp" and a.op in _STRONG_OPS) or (a.kind in ("abs", "isclose") and _tight(plan, a)):
            return True
    return False


TIGHT = 1e-3  # the largest tolerance that still tests a value (relative to it when it is large)


def _tight(plan: Plan, a: Assertion) -> bool:
    """``abs(f(x) - y) < tol`` and ``math.isclose`` count only with a small literal tolerance:
    ``< 1e999`` or ``rel_tol=1`` passes anything."""
    ok, y = literal(plan.expected[a.expected]) if a.expected is not None else (False, None)
    scale = max(1.0, abs(y)) if ok and isinstance(y, (int, float)) and not isinstance(y, bool) else 1.0
    if a.kind == "abs":
        ok, tol = literal(plan.expected[a.tol]) if a.tol is not None else (False, None)
        return ok and isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol <= TIGHT * scale
    for kw, i in a.isclose_kw.items():
        ok, tol = literal(plan.expected[i])
        if not ok or not isinstance(tol, (int, float)) or isinstance(tol, bool) or tol < 0:
            return False
        if tol > (TIGHT * scale if kw == "abs_tol" else TIGHT):
            return False
    return True
