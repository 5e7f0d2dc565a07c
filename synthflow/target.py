"""Weakness-targeted generation (DataEnvGym, Khan et al. 2024; Skill-it, Chen et al. 2023): evaluate
a student model on a skill-tagged set, then generate more data for the skills it fails.

Each round: the student (any engine; the embedded model by default) answers every question of the
evaluation set in one engine call; answers are graded by math-verify when the reference is a number
or expression, else by normalized exact match (the student's last ``Answer:`` line, so a long answer
that merely contains the reference does not pass); per-skill accuracy is written; then a generation
run of the recipe (SkillMix) starts with the evaluation's skills as its skill list and skill
weights ``(1 - accuracy) + floor``, normalized, so the weakest skills are drawn most.

Training the student is out of scope: with the same student, each round's evaluation repeats the
last one, and its weights follow that round's weaknesses.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from synthflow.engines.base import Request, Sampling
from synthflow.errors import UserError
from synthflow.prompts import load_prompt

PROMPTS = ("target/answer.jinja2",)
FLOOR = 0.05  # every skill keeps some weight: a skill the student passes is not forgotten
QUERY_TYPES = [
    "question",
    "request for an explanation",
    "request for step-by-step instructions",
    "writing task",
]


def load_eval(path: str) -> list[dict[str, str]]:
    """``builtin:skill_eval.jsonl`` is a 30-question example set (6 skills) shipped with synthflow."""
    from synthflow.seeds import resolve_path

    p = resolve_path(path)
    if not p.is_file():
        raise UserError(f"--eval: {path} not found (a JSONL file with skill, question, answer)")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            raise UserError(f"{p}:{n}: not a JSON line") from None
        missing = [
            k for k in ("skill", "question", "answer") if not isinstance(r, dict) or r.get(k) in (None, "")
        ]
        if missing:
            raise UserError(f"{p}:{n}: missing {', '.join(missing)}")
        rows.append(
            {"skill": str(r["skill"]).strip(), "question": str(r["question"]), "answer": str(r["answer"])}
        )
    if not rows:
        raise UserError(f"{p}: no rows")
    return rows


_ANSWER = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:：]\s*\**\s*(.+?)\s*\**\s*$", re.I | re.M)


def final_answer(text: str) -> str:
    """The student's last ``Answer:`` line, else its last non-empty line."""
    m = _ANSWER.findall(text)
    if m:
        return m[-1].strip()
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def _norm(s: str) -> str:
    s = s.lower().strip()
    s = "".join(c for c in s if c not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_NUMBERS = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")


def _numeric(s: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+]?\$?\s*[\d,]*\.?\d+(\s*/\s*\d+)?\s*%?\s*", s))


def grade(prediction: str, reference: str) -> bool:
    got = final_answer(prediction)
    if _numeric(reference):
        from synthflow.mathcheck import equivalent

        # exactly one number: "57 or 56" hedges between answers and is wrong whichever comes first
        nums = _NUMBERS.findall(got)
        return len(nums) == 1 and equivalent(nums[0].replace(",", ""), reference)
    return bool(got) and _norm(got) == _norm(reference)


def evaluate(
    engine: Any, rows: list[dict[str, str]], sampling: Sampling
) -> tuple[dict[str, dict[str, Any]], list[bool]]:
    """Per-skill accuracy of the student, in one engine call for all questions."""
    tmpl = load_prompt(PROMPTS[0])
    reqs = [Request(messages=tmpl.render(question=r["question"])) for r in rows]
    comps = engine.generate(reqs, sampling)
    ok = [grade(c.text, r["answer"]) for r, c in zip(rows, comps, strict=True)]
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "correct": 0})
    for r, good in zip(rows, ok, strict=True):
        per[r["skill"]]["n"] += 1
        per[r["skill"]]["correct"] += int(good)
    for d in per.values():
        d["accuracy"] = round(d["correct"] / d["n"], 4)
    return dict(sorted(per.items())), ok


def weights(accuracy: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Skill weights for the next generation: the weaker the skill, the more of it."""
    raw = {s: (1.0 - d["accuracy"]) + FLOOR for s, d in accuracy.items()}
    total = sum(raw.values())
    return {s: round(v / total, 4) for s, v in raw.items()}


def skills_file(path: Path, accuracy: dict[str, dict[str, Any]]) -> Path:
    """A SkillMix ``skills_file`` with the evaluation's skills (the generation targets them)."""
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "source": "synthflow target",
                "skills": [{"name": s, "count": d["n"]} for s, d in accuracy.items()],
                "query_types": [{"name": q, "count": 1} for q in QUERY_TYPES],
            },
            indent=1,
        )
    )
    return path


def skills_drawn(run_dir: Path) -> dict[str, int]:
    """How often each skill was drawn over every generated row of a run (data and rejects)."""
    import duckdb

    files = [str(f) for sub in ("data", "rejects") for f in sorted((run_dir / sub).glob("*.parquet"))]
    if not files:
        return {}
    q = "SELECT s, count(*) FROM (SELECT unnest(skills) AS s FROM read_parquet(?, union_by_name=true)) GROUP BY 1 ORDER BY 2 DESC, 1"
    return {k: int(v) for k, v in duckdb.execute(q, [files]).fetchall()}


def table(accuracy: dict[str, dict[str, Any]], w: dict[str, float]) -> str:
    width = max(len(s) for s in accuracy)
    lines = [f"  {'skill':<{width}}  correct    accuracy  next weight"]
    for s, d in sorted(accuracy.items(), key=lambda kv: kv[1]["accuracy"]):
        lines.append(f"  {s:<{width}}  {d['correct']:>3}/{d['n']:<4}  {d['accuracy']:>8.2f}  {w[s]:>11.3f}")
    return "\n".join(lines)


def run_target(
    student: Any,
    rows: list[dict[str, str]],
    recipe: str,
    rounds: int,
    out: Path,
    generate: Any,
    sampling: Sampling | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """``rounds`` of evaluate -> weights -> generate. ``generate(recipe, sets)`` runs the recipe with
    ``--set`` overrides and returns its summary. Writes ``target.json`` (and one skills file per
    round) under ``out`` and returns it."""
    out.mkdir(parents=True, exist_ok=True)
    sampling = sampling or Sampling(temperature=0.0, top_p=1.0, max_tokens=256)
    history = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        acc, _ = evaluate(student, rows, sampling)
        w = weights(acc)
        log(
            f"round {rnd}: student accuracy per skill ({len(rows)} questions, {time.perf_counter() - t0:.1f} s)"
        )
        log(table(acc, w))
        sk = skills_file(out / f"skills-round{rnd}.json", acc)
        sets = [f"generator.options.skills_file={sk}", f"generator.options.skill_weights={json.dumps(w)}"]
        summary = generate(recipe, sets)
        drawn = skills_drawn(Path(summary["path"])) if summary.get("path") else {}
        history.append({"round": rnd, "accuracy": acc, "weights": w, "run": summary.get("path"),
                        "accepted": (summary.get("counts") or {}).get("accepted"), "skills_drawn": drawn})  # fmt: skip
        log(f"round {rnd}: generated with these weights: {summary.get('path')}")
    result = {"recipe": recipe, "eval_rows": len(rows), "rounds": history}
    tmp = out / "target.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out / "target.json")
    return result
