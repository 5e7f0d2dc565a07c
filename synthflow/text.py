"""Text normalization shared by dedup, decontamination and scoring."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_PUNCT_RE = re.compile(r"[^\w\s]+", re.UNICODE)
_WS_RE = re.compile(r"\s+")


# ASCII fast path: the same mapping as the regexes below, as one str.translate table
_ASCII_PUNCT = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())}


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation to spaces, whitespace collapsed."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT_RE.sub(" ", text)
    return _WS_RE.sub(" ", text).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()


def exact_key(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()
