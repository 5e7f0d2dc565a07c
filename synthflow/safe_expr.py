"""Arithmetic expressions over named numbers, evaluated without ``eval``.

Used for what a model writes into a math template: variable constraints (``b < a``,
``a % b == 0``) and the ``{expr}`` placeholders of a natural-language solution. Only numbers, the
given names, arithmetic (+ - * / // % **), comparisons, ``and``/``or``/``not``, parentheses and the
functions ``abs``, ``min``, ``max`` and ``round`` are allowed; anything else is refused when the
expression is compiled, so a template cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable
from typing import Any

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCS = {"abs": abs, "min": min, "max": max, "round": round}
MAX_POWER = 64


class ExprError(ValueError):
    pass


def compile_expr(src: str, names: Iterable[str]) -> ast.Expression:
    """Parse and check an expression; ExprError names what is not allowed."""
    allowed = set(names)
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"not an expression: {src!r}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load, ast.BoolOp, ast.And, ast.Or, ast.Compare)):
            continue
        if isinstance(node, (*_BIN, *_UNARY, *_CMP, ast.BinOp, ast.UnaryOp)):
            continue
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            continue
        if isinstance(node, ast.Name) and (node.id in allowed or node.id in _FUNCS):
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            continue
        what = node.id if isinstance(node, ast.Name) else type(node).__name__
        raise ExprError(f"{what!s} is not allowed in {src!r}")
    return tree


def evaluate(tree: ast.Expression, env: dict[str, Any]) -> Any:
    """The value of a compiled expression; ExprError on division by zero or a huge power."""
    try:
        return _eval(tree.body, env)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as e:
        raise ExprError(str(e)) from None


def _eval(n: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(n, ast.Constant):
        return n.value
    if isinstance(n, ast.Name):
        return env[n.id]
    if isinstance(n, ast.BinOp):
        a, b = _eval(n.left, env), _eval(n.right, env)
        if isinstance(n.op, ast.Pow) and abs(b) > MAX_POWER:
            raise ExprError("power too large")
        return _BIN[type(n.op)](a, b)
    if isinstance(n, ast.UnaryOp):
        return _UNARY[type(n.op)](_eval(n.operand, env))
    if isinstance(n, ast.BoolOp):
        vals = (_eval(v, env) for v in n.values)
        return all(vals) if isinstance(n.op, ast.And) else any(vals)
    if isinstance(n, ast.Compare):
        left = _eval(n.left, env)
        for op, comp in zip(n.ops, n.comparators, strict=True):
            right = _eval(comp, env)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(n, ast.Call):
        return _FUNCS[n.func.id](*(_eval(a, env) for a in n.args))  # type: ignore[attr-defined]
    raise ExprError(f"cannot evaluate {type(n).__name__}")
