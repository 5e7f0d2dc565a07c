"""Persona-driven synthesis (Chan et al., 2024, "Scaling Synthetic Data Creation with 1,000,000,000
Personas"; PersonaMath): diversity from who asks rather than from temperature. Each item of a run
draws one persona (deterministic in the recipe's seed and the item index); the generator's persona
template asks for a problem or instruction that this person would pose, and the row keeps the
persona in its ``persona`` column.

``builtin:personas.jsonl`` ships 300 short personas written for this project (``persona``,
``domain``); a user file may be JSONL with a ``persona`` field or plain text, one per line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

from synthflow.errors import UserError
from synthflow.text import words

BUILTIN = "builtin:personas.jsonl"


def load_personas(path: str, where: str = "generator.options.personas") -> list[str]:
    from synthflow.seeds import resolve_path

    p = resolve_path(path)
    if not p.is_file():
        raise UserError(f"{where}: persona file {path!r} not found")
    out: list[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"{p}:{n}: not a JSON line") from None
            text = obj.get("persona") if isinstance(obj, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{p}:{n}: no 'persona' text")
            line = text.strip()
        out.append(" ".join(line.split()))
    if not out:
        raise UserError(f"{where}: persona file {path!r} is empty")
    return out


def persona_for(personas: list[str], seed: int | str, index: int) -> str:
    """The persona of item ``index``: a seeded draw, the same in every run of the recipe."""
    return random.Random(f"{seed}:persona:{index}").choice(personas)


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct-n (Li et al., 2016): distinct word n-grams over all n-grams of the texts."""
    total, seen = 0, set()
    for t in texts:
        w = words(t)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 4) if total else None


def diversity(texts: list[str]) -> dict[str, float | int | None]:
    return {"rows": len(texts), "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "distinct_3": distinct_n(texts, 3)}  # fmt: skip
