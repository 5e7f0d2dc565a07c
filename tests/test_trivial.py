"""Checks a model could pass without being right: PAL programs that only state their answer, and
template formulas that try to run code."""

from __future__ import annotations

import pytest

from synthflow.safe_expr import ExprError, compile_expr, evaluate
from synthflow.trivial import problem_numbers, trivial_reason

PROBLEM = "A shop has 12 boxes with 4 pens each and sells 5 pens. How many pens are left?"


@pytest.mark.parametrize(
    "program, why",
    [
        ("def solution():\n    return 43", "literal_return"),
        ("def solution():\n    return 12 * 4 - 5", "literal_return"),  # a constant expression
        ("def solution():\n    left = 43\n    return left", "literal_return"),  # a literal in a variable
        ("def solution():\n    boxes = 12\n    if boxes:\n        return 43\n    return 0", "literal_return"),
        (
            "def solution():\n    apples = 7\n    pears = 3\n    return apples * pears",
            "ignores_problem_numbers",
        ),
        (
            "def solution():\n    boxes = 12\n    per = 4\n    x = boxes * per\n    return x - x + 43",
            "hardcoded_answer",
        ),
        ("def solution():\n    x = 43\n    y = x\n    return y * 1", "ignores_problem_numbers"),
        ("def solution():\n    boxes = 12\n    per = 4\n    sold = 5\n    return boxes * per - sold", ""),
        (
            "def solution():\n    total = 0\n    for _ in range(12):\n        total += 4\n    return total - 5",
            "",
        ),
        ("def solution():\n    return sum([12 * 4, -5])", ""),  # a call over the problem's numbers
    ],
)
def test_trivial_programs(program, why):
    assert trivial_reason(PROBLEM, program, "43") == why


def test_a_problem_without_numbers_has_nothing_to_compute_from():
    """Seen on the embedded model: a problem that states no quantity, and a program that makes its
    numbers up, agreeing with the stated answer."""
    prog = "def solution():\n    pickers = 2\n    weeks = 2\n    return pickers * weeks"
    why = trivial_reason("What is the maximum number of pickers a coffee grower can hire?", prog, "4")
    assert why == "no_numbers_in_problem"
    assert trivial_reason("Two rows of two pickers: how many pickers?", prog, "4") == ""  # number words count


def test_problem_numbers_read_digits_percents_and_words():
    assert problem_numbers("Save 25% of $1,200 over three years, twice a week.") >= {
        25.0,
        0.25,
        1200.0,
        3.0,
        2.0,
    }


def test_trivial_rows_never_reach_the_sandbox():
    from filters.verify import Verify
    from synthflow.record import Record

    def rec(i, prog, ans="43"):
        return Record(id=f"r{i}", recipe="t", generator="math_pal", seed_id="s",
                      fields={"problem": PROBLEM, "program": prog, "answer": ans})  # fmt: skip

    v = Verify({"kind": "math_pot"})
    try:
        res = v([
            rec(0, "def solution():\n    return 43"),
            rec(1, "def solution():\n    boxes = 12\n    per = 4\n    sold = 5\n    return boxes * per - sold"),
        ])  # fmt: skip
    finally:
        v.close()
    assert [r.id for r in res.kept] == ["r1"]
    j = res.rejects[0]
    assert (
        j.reason == "verify:trivial_program:literal_return"
        and j.record.verdict["exc_type"] == "TrivialProgram"
    )


@pytest.mark.parametrize(
    "src",
    [
        "__import__('os').system('true')",
        "a.__class__",
        "open('x')",
        "[x for x in range(3)]",
        "(lambda: 1)()",
        "b",  # not a declared variable
        "'text'",
    ],
)
def test_safe_expr_refuses_code(src):
    with pytest.raises(ExprError):
        compile_expr(src, ["a"])


def test_safe_expr_evaluates_arithmetic():
    t = compile_expr("a % b == 0 and b < a", ["a", "b"])
    assert evaluate(t, {"a": 12, "b": 4}) is True and evaluate(t, {"a": 12, "b": 5}) is False
    assert evaluate(compile_expr("max(a, b) // 2 + round(a / 3, 1)", ["a", "b"]), {"a": 10, "b": 4}) == 8.3
    with pytest.raises(ExprError):
        evaluate(compile_expr("a / b", ["a", "b"]), {"a": 1, "b": 0})
    with pytest.raises(ExprError):
        evaluate(compile_expr("a ** 1000", ["a"]), {"a": 10})
