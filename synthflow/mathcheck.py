"""Answer equivalence with math-verify (0.5 == 1/2 == 2/4; '50%' vs 0.5 is a setting)."""

from __future__ import annotations

import logging
import math
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


def equivalent(stated: Any, computed: Any, percent_equals_fraction: bool = True) -> bool:
    """True when the stated answer and the computed value are the same number or expression."""
    from math_verify import verify

    s = str(stated).strip()
    if not s:
        return False
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


def canonical(value: Any) -> str:
    """A key to group equal answers (self-consistency majority). Ints too large for a float keep
    their digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return str(value)
    try:
        f = float(value)
        return f"{f:.6g}"
    except (TypeError, ValueError, OverflowError):
        return str(value).strip()


def is_whole(x: int | float) -> bool:
    """Whole number, also for ints too large for a float."""
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
