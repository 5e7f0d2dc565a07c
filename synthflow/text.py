"""Text normalization shared by dedup, decontamination and scoring."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_PUNCT_RE = re.compile(r"[^\w\s]+", re.UNICODE)
_WS_RE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT_RE.sub(" ", text)
    return _WS_RE.sub(" ", text).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()


def exact_key(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()
