"""Answer equivalence with math-verify (0.5 == 1/2 == 2/4; '50%' vs 0.5 is a setting)."""

from __future__ import annotations

import logging
import math
import re
import threading
from functools import lru_cache
from typing import Any

logging.getLogger("math_verify").setLevel(logging.ERROR)


def _timeouts() -> int | None:
    # math-verify's timeouts use SIGALRM, which only works in the main thread
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse(text: str, timeout: int | None) -> Any:
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        # binary float noise is not a different answer: 25 * 0.28 = 7.000000000000001 is 7
        value = float(f"{value:.12g}")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
    return str(value)


_PLAIN_NUMBER = re.compile(r"^\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?)$")


def _plain(x: Any) -> int | float | None:
    """A number written plainly (``2500000``, ``2,500,000``, ``$12.50``, ``2.5e6``), else None.
    Whole numbers written without a point or exponent stay ints (exact, however large)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    m = _PLAIN_NUMBER.match(str(x).strip())
    if not m:
        return None
    text = m.group(1).replace(",", "")
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except (ValueError, OverflowError):
        return None


def _same(a: int | float, b: int | float) -> bool:
    if type(a) is int and type(b) is int:
        return a == b
    return as_text(float(a)) == as_text(float(b))


_SINGLE = re.compile(
    r"^\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?\s*%?$|^-?\.\d+$|^-?\d+\s*/\s*\d+$"
)


def single_answer(stated: Any) -> bool:
    """Is a stated answer one number (``31``, ``2,500,000``, ``$12.50``, ``50%``, ``3/4``)? Not
    ``30 or 31``, ``[30, 31]`` or ``30 to 31``: a hedge that math-verify would match either way."""
    return bool(_SINGLE.match(str(stated).strip()))


def equivalent(stated: Any, computed: Any, percent_equals_fraction: bool = True) -> bool:
    """True when the stated answer and the computed value are the same number or expression. Two
    plainly written numbers are compared as numbers, to 12 significant digits (math-verify does not
    read ``2.5e6``); anything else goes to math-verify."""
    from math_verify import verify

    s = str(stated).strip()
    if not s:
        return False
    b = _plain(computed)
    if b is None and type(computed).__name__ in ("Fraction", "Decimal"):
        b = float(computed)
    if s.endswith("%") and b is not None and (pct := _plain(s[:-1].strip())) is not None:
        # 50% is 50, and 0.5 when percent_equals_fraction; 3100% is never 31
        options = [pct] + ([pct / 100] if percent_equals_fraction and 0 <= pct <= 100 else [])
        return any(_same(x, b) for x in options)
    a = _plain(s)
    if a is not None and b is not None:
        return _same(a, b)
    t = _timeouts()
    gold_texts = [s]
    if s.endswith("%") and not percent_equals_fraction:
        gold_texts = [s[:-1].strip()]  # '50%' means 50 only
    pred = _parse(as_text(computed), t)
    if not pred:
        return False
    for g in gold_texts:
        gold = _parse(g, t)
        if gold and verify(gold, pred, timeout_seconds=t):
            return True
    return False


def is_whole(x: int | float) -> bool:
    """Whole number, also for ints too large for a float."""
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
