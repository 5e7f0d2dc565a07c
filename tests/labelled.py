"""Labelled quality data for scorer tests, built from human-written seed tasks: each good response
gets a bad twin that is truncated, looping or evasive (chosen by a seeded RNG)."""

from __future__ import annotations

import json
import random
from pathlib import Path

EVASIVE = (
    "As an AI language model, I cannot help with that request.",
    "I'm sorry, but I can't provide an answer to this question.",
    "I am unable to assist with this. Please consult a professional.",
    "It depends on many factors, so I cannot give a definite answer.",
    "I'm just an AI and I can't do that.",
)


def seed_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(task id, instruction [+ input], output) for every instance of Self-Instruct-format tasks."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        t = json.loads(line)
        for k, inst in enumerate(t["instances"]):
            instr = t["instruction"] + (f"\n\n{inst['input']}" if inst.get("input", "").strip() else "")
            if inst["output"].strip():
                out.append((f"{t['id']}#{k}", instr, inst["output"]))
    return out


def spoil(response: str, rng: random.Random) -> tuple[str, str]:
    """A bad twin. Truncation (a generation cut at max_tokens) only hits responses of 8+ words; it cuts
    at a token-like point: between words, or inside one."""
    words = response.split()
    kind = rng.choice(("truncated", "looping", "evasive") if len(words) >= 8 else ("looping", "evasive"))
    if kind == "truncated":
        cut = rng.randint(len(response) // 4, (3 * len(response)) // 4)
        if rng.random() < 0.5:  # at a word boundary
            cut = response.rfind(" ", 0, cut) if " " in response[:cut] else cut
        return kind, response[:cut].rstrip()
    if kind == "looping":
        chunk = " ".join(words[: rng.randint(3, 8)]) if len(words) >= 3 else response
        return kind, " ".join([chunk] * rng.randint(4, 8))
    return kind, rng.choice(EVASIVE)


def labelled_rows(path: Path, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for tid, instr, resp in seed_pairs(path):
        rows.append({"id": f"{tid}-good", "task": tid, "instruction": instr, "response": resp, "good": True})
        kind, bad = spoil(resp, rng)
        rows.append(
            {"id": f"{tid}-{kind}", "task": tid, "instruction": instr, "response": bad, "good": False}
        )
    return rows
