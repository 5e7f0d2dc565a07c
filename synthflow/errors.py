"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, file, engine, data). The CLI prints ``str(err)`` and exits 2."""

    exit_code = 2


class EngineUnavailable(UserError):
    """The configured engine cannot be reached or started."""


def _number(kind: type, text: str) -> float:
    import argparse

    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a{'n integer' if kind is int else ' number'}"
        ) from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    import argparse

    v = int(_number(int, text))
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give 1 or more")
    return v


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    import argparse

    v = float(_number(float, text))
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number above 0")
    return v


def fraction(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    import argparse

    v = float(_number(float, text))
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a share above 0 and at most 1")
    return v
