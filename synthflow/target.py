"""Weakness-targeted generation (DataEnvGym, Khan et al. 2024; Skill-it, Chen et al. 2023): evaluate
a student model on a skill-tagged set, then generate more data for the skills it fails.

Each round: the student (any engine; the embedded model by default) answers every question of the
evaluation set in one engine call; answers are graded by math-verify when the reference is a number,
by normalized exact match when it is a short phrase (the student's last ``Answer:`` line, so a long
answer that merely contains the reference does not pass), and by a reference-guided judge
(``prompts/target/grade.jinja2``, one engine call) when it is free text, e.g. the responses of an
earlier run; per-skill accuracy is written; then a generation run of the recipe (SkillMix) starts,
with the evaluation questions added to its decontamination (no generated row is one of them)
with the evaluation's skills as its skill list and skill weights ``(1 - accuracy) + floor``,
normalized, so the weakest skills are drawn most.

The evaluation set is a JSONL file (``skill`` or ``skills``, ``question``, ``answer``) or the folder
of a finished run whose rows carry skills (a SkillMix run: ``skills``, ``instruction``,
``response``); a question with several skills counts for each of them.

Training the student is out of scope: with the same student, each round's evaluation repeats the
last one, and its weights follow that round's weaknesses.

Size: the evaluation set's readers, the three graders and the round loop are one command's parts
and are used nowhere else.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from synthflow.engines.base import Request, Sampling
from synthflow.errors import UserError
from synthflow.prompts import load_prompt
from synthflow.text import words

PROMPTS = ("target/answer.jinja2", "target/grade.jinja2")
JUDGE_MIN = 7.0  # the reference-guided judge's score (1-10) from which an answer counts as right
SHORT_WORDS = 6  # a reference of at most this many words is graded by exact match under "auto"
FLOOR = 0.05  # every skill keeps some weight: a skill the student passes is not forgotten
QUERY_TYPES = [
    "question",
    "request for an explanation",
    "request for step-by-step instructions",
    "writing task",
]


def load_eval(path: str) -> list[dict[str, Any]]:
    """Evaluation rows ``{"skills": [...], "question", "answer"}`` from a JSONL file or a run folder.
    ``builtin:skill_eval.jsonl`` is a 30-question example set (6 skills) shipped with synthflow."""
    from synthflow.seeds import resolve_path

    p = resolve_path(path)
    if p.is_dir():
        return eval_from_run(p)
    if not p.is_file():
        raise UserError(
            f"--eval: {path} not found (a JSONL file with skill, question, answer, or a run folder)"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--eval: {p}: not UTF-8 text (byte {e.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError:
            raise UserError(f"{p}:{n}: not a JSON line") from None
        if isinstance(r, dict) and "skill" not in r and "skills" in r:
            r = {**r, "skill": r["skills"]}
        missing = [
            k
            for k in ("skill", "question", "answer")
            if not isinstance(r, dict) or r.get(k) in (None, "", [])
        ]
        if missing:
            raise UserError(f"{p}:{n}: missing {', '.join(missing)}")
        rows.append(
            {"skills": _skills(r["skill"]), "question": str(r["question"]), "answer": str(r["answer"])}
        )
    if not rows:
        raise UserError(f"{p}: no rows")
    return rows


def _skills(v: Any) -> list[str]:
    items = v if isinstance(v, list) else [v]
    return list(dict.fromkeys(str(x).strip() for x in items if str(x).strip()))


def eval_from_run(run_dir: Path) -> list[dict[str, Any]]:
    """The accepted rows of a finished run as evaluation rows: its skills, its prompt as the question
    and its response as the reference (graded by the judge when it is free text)."""
    import duckdb

    if not (run_dir / "_SUCCESS").exists():
        raise UserError(f"--eval {run_dir}: not a finished run (no _SUCCESS)")
    files = [str(f) for f in sorted((run_dir / "data").glob("*.parquet"))]
    if not files:
        raise UserError(f"--eval {run_dir}: the run has no data/*.parquet rows")
    rel = duckdb.sql(f"SELECT * FROM read_parquet({files!r}, union_by_name=true)")
    cols = set(rel.columns)
    pick = {
        "skill": next((c for c in ("skills", "skill") if c in cols), None),
        "question": next((c for c in ("instruction", "problem", "question") if c in cols), None),
        "answer": next((c for c in ("response", "answer", "output") if c in cols), None),
    }
    missing = [k for k, c in pick.items() if c is None]
    if missing:
        raise UserError(
            f"--eval {run_dir}: its rows have no {' / '.join(missing)} column (give a SkillMix run's folder)"
        )
    rows = []
    for sk, q, a in rel.select(", ".join(f'"{pick[k]}"' for k in ("skill", "question", "answer"))).fetchall():
        skills = _skills(sk or [])
        if skills and q and a:
            rows.append({"skills": skills, "question": str(q), "answer": str(a)})
    if not rows:
        raise UserError(f"--eval {run_dir}: no row has skills, a question and an answer")
    return rows


def row_skills(r: dict[str, Any]) -> list[str]:
    return r.get("skills") or _skills(r["skill"])


_ANSWER = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:：]\s*\**\s*(.+?)\s*\**\s*$", re.I | re.M)


def final_answer(text: str) -> str:
    """The student's last ``Answer:`` line, else its last non-empty line."""
    m = _ANSWER.findall(text)
    if m:
        return m[-1].strip()
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def _norm(s: str, articles: bool = True) -> str:
    s = s.lower().strip()
    s = "".join(c for c in s if c not in string.punctuation and c not in "“”‘’«»")
    if articles:
        s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_NUMBERS = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")


def _numeric(s: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+]?\$?\s*[\d,]*\.?\d+(\s*/\s*\d+)?\s*%?\s*", s))


_HEDGE = re.compile(
    r"\b(?:or|not|no|never|nor|none|maybe|perhaps|probably|possibly|unsure|guess|doubt|unlikely|wrong|"
    r"incorrect|false|except|but|than|wait|actually|approx)\b|\bat (?:least|most)\b|n't\b|[?≠]",
    re.I,
)
# a stated result at the end of the last sentence: "... is Paris.", "... = 14 days", "is equal to 500 grams"
_COPULA = re.compile(r"=|\bis\b|\bare\b|\bwas\b|\bequals\b|:", re.I)
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
# a bare number, with at most 3 unit words ("14 days", "$40", "5,000 grams"); not a bound, a scale
# or an expression ("56 thousand", "56 squared", "56 + x")
_BARE_NUMBER = re.compile(
    rf"^(?:equal to |equivalent to |about )?\$?\s*(?P<n>{_NUM})\s*%?"
    r"(?:\s+(?!(?:thousand|million|billion|trillion|k|squared|cubed|times|plus|minus|more|less)\b)[a-z]+){0,3}"
    r"\s*[.!]?$",
    re.I,
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def _clean(text: str) -> str:
    """NFKC, one kind of minus sign, no zero-width characters; "- 56" is -56."""
    import unicodedata

    t = unicodedata.normalize("NFKC", text)
    t = re.sub(r"[\u200b-\u200f\u2060\ufeff]", "", t)
    t = re.sub(r"[\u2212\u2012\u2013\u2014\ufe63\uff0d]", "-", t)
    return re.sub(r"(?<![\w)])-\s+(?=\d)", "-", t)


def _stated(sentence: str) -> str | None:
    """What the sentence's last copula states, up to its end ("The capital of Japan is Tokyo." ->
    "Tokyo"); None without one."""
    ms = list(_COPULA.finditer(sentence))
    if not ms:
        return None
    value = sentence[ms[-1].end() :].strip().rstrip(".!").strip().strip("\"'*").strip()
    return re.sub(r"^(?:the|a|an)\s+", "", value, flags=re.I) or None


def _last_sentence(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    if not lines:
        return ""
    parts = _sentences(lines[-1])
    return parts[-1] if parts else ""


def _sentences(line: str) -> list[str]:
    return [p.strip() for p in re.split(r"(?<=[.!?;])\s+", line.strip()) if p.strip()]


def _hedged(text: str, reference: str) -> bool:
    """A hedge, negation or doubt in the text, outside the reference's own words ("No" may be it)."""
    for w in sorted(set(words(reference)), key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(w)}\b", " ", text, flags=re.I)
    return bool(_HEDGE.search(text))


def _number_is(value: str, reference: str) -> bool:
    from synthflow.mathcheck import equivalent

    m = _BARE_NUMBER.match(value.strip().strip("*").strip())
    return bool(m) and equivalent(re.sub(r"\s+", "", m.group("n")).replace(",", ""), reference)


def _phrase_is(value: str, reference: str) -> bool:
    got, ref = _norm(value), _norm(reference)
    if not ref:  # "A" (a choice letter) is all article: compare with articles kept
        got, ref = _norm(value, articles=False), _norm(reference, articles=False)
    return bool(got) and got == ref


def grade(prediction: str, reference: str, question: str | None = None) -> bool:
    """Right when the student's final answer is the reference, and only it.

    The final answer is its ``Answer:`` line (several that disagree, or a hedge or another number
    after it, are wrong); without one, the last line when it is the answer alone, or else what the
    last sentence states after its last copula ("The capital of France is Paris.", "2 * 7 days = 14
    days"). A numeric answer must be a bare number with at most 3 unit words ("56 thousand", "at
    least 56", "56 + x" are not 56). A hedge, negation or doubt ("Paris or Rome", "not 56", "56 is
    wrong"), a list ("Paris, Rome and Oslo", bullets) and several stated values are wrong."""
    from filters.judge import injection

    text = _clean(prediction)
    reference = _clean(reference).strip()
    if injection(text):
        return False  # an answer that addresses the grader ("ignore previous rules", "Score: 10")
    numeric = _numeric(reference)
    answers = [a.strip() for a in _ANSWER.findall(text)]
    same = _number_is if numeric else _phrase_is
    got = final_answer(text)
    if answers:
        if any(not same(a, reference) for a in answers[:-1]):
            return False  # "Answer: 57 ... Answer: 56": which one?
        after = text[text.rfind(got) + len(got) :]
        if _hedged(after, reference) or (numeric and _NUMBERS.search(after)):
            return False  # "Answer: 56\nBut it might be 57."
        return not _hedged(got, reference) and same(got, reference)
    if not got or _BULLET.match(got):
        return False
    if same(got.strip("*").strip(), reference) and not _hedged(got, reference):
        return True
    sent = _last_sentence(text)
    if _hedged(sent, reference) or ("," in sent and len(_COPULA.findall(sent)) > 1):
        return False  # "x = 56, y = 57"
    value = _stated(sent)
    if not numeric and value and _contradicted(text, sent, reference, question):
        return False  # "The capital of France is Lyon. The capital of Italy is Paris."
    return bool(value) and same(value, reference)


_CONNECTIVES = re.compile(
    r"^(?:(?:so|thus|therefore|hence|then|and|in conclusion|in summary|overall|finally|my|our)\b[\s,]*)+",
    re.I,
)
_GENERIC = {"answer", "final answer", "correct answer", "it", "that", "this", "result"}
# an earlier statement: "is"/"are"/"was"/"equals" only; a colon ("Step 1: ...", "Note: ...") is a label
_EARLIER_COPULA = re.compile(r"\bis\b|\bare\b|\bwas\b|\bequals\b", re.I)


def _subject(sentence: str, copula: re.Pattern[str] = _COPULA) -> list[str]:
    ms = list(copula.finditer(sentence))
    if not ms:
        return []
    subject = _norm(_CONNECTIVES.sub("", sentence[: ms[-1].start()].strip())).split()
    while subject and _EARLIER_COPULA.fullmatch(subject[-1]):  # "The final answer is: Paris"
        subject.pop()
    return subject


def _contradicted(text: str, last: str, reference: str, question: str | None) -> bool:
    """An earlier sentence gives another value for a parallel subject: "The capital of France is
    Lyon. The capital of Italy is Paris." Parallel: the same subject, or one of the same length (2+
    words) that differs in one word. With the question, an earlier statement counts only when its
    subject is at least as close to the question as the last one's ("The capital of Italy is Rome.
    The capital of France is Paris." answers a question about France). Earlier sentences that name
    the reference, or a part of it, do not count. Numeric answers are exempt (their working states
    intermediate values)."""
    sw = _subject(last)
    if not sw:
        return False
    ref = set(_norm(reference).split())
    asked = set(_norm(question).split()) if question else None
    sentences = [p for line in text.splitlines() for p in _sentences(line)]
    for s in sentences[:-1]:
        ms = list(_EARLIER_COPULA.finditer(s))
        if not ms or ref & set(_norm(s).split()):
            continue
        value = _norm(s[ms[-1].end() :])
        other = _subject(s, _EARLIER_COPULA)
        if not value or not other:
            continue
        parallel = other == sw or (
            len(other) == len(sw) >= 2 and sum(a != b for a, b in zip(other, sw, strict=True)) <= 1
        )
        # "The capital of France is Lyon. The answer is Paris.": the earlier sentence answers the
        # question itself (a subject of 2+ words, all from the question), without a hedge
        answers_it = (
            " ".join(sw) in _GENERIC
            and asked is not None
            and len(other) >= 2
            and set(other) <= asked
            and not _HEDGE.search(s[ms[-1].end() :])
        )
        if not (parallel or answers_it):
            continue
        if asked is not None and len(set(other) & asked) < len(set(sw) & asked):
            continue  # the earlier statement is the contrast, the last one answers the question
        return True
    return False


def grader_for(reference: str, mode: str = "auto") -> str:
    """``math`` for a numeric reference, ``exact`` for a short phrase, else ``judge``."""
    if mode != "auto":
        return mode
    if _numeric(reference):
        return "math"
    return "exact" if len(reference.split()) <= SHORT_WORDS else "judge"


def judge_requests(items: list[tuple[dict[str, Any], str]], max_chars: int = 4000) -> list[Any]:
    from filters.judge import JUDGE_SCHEMA

    tmpl = load_prompt(PROMPTS[1])
    return [
        Request(
            messages=tmpl.render(
                question=r["question"][:max_chars],
                reference=r["answer"][:max_chars],
                answer=answer[:max_chars],
            ),
            json_schema=JUDGE_SCHEMA,
        )
        for r, answer in items
    ]


def evaluate(
    engine: Any,
    rows: list[dict[str, Any]],
    sampling: Sampling,
    judge: Any = None,
    grader: str = "auto",
    judge_min: float = JUDGE_MIN,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per-skill accuracy of the student, in one engine call for all questions (and one judge call
    for the free-text references). Returns it and one graded entry per question."""
    from filters.judge import injection, parse_judgment

    tmpl = load_prompt(PROMPTS[0])
    reqs = [Request(messages=tmpl.render(question=r["question"])) for r in rows]
    comps = engine.generate(reqs, sampling)
    graded: list[dict[str, Any]] = []
    to_judge: list[int] = []
    for r, c in zip(rows, comps, strict=True):
        how = grader_for(r["answer"], grader)
        g = {"skills": row_skills(r), "question": r["question"], "reference": r["answer"],
             "student": c.text, "grader": how, "correct": False, "judge_score": None, "why": None}  # fmt: skip
        if c.finish_reason == "length":
            g["why"] = "truncated"  # a cut-off answer is not right, whatever its prefix says
        elif how == "judge":
            if not c.text.strip():
                g["why"] = "empty"
            elif injection(c.text):
                g["why"] = "injection_suspected"  # an answer that addresses the grader is wrong
            else:
                to_judge.append(len(graded))
        else:
            g["correct"] = grade(c.text, r["answer"], r["question"])
        graded.append(g)
    if to_judge:
        jreqs = judge_requests([(rows[i], comps[i].text) for i in to_judge])
        jsamp = Sampling(temperature=0.0, top_p=1.0, max_tokens=256, seed=sampling.seed)
        for i, req, jc in zip(to_judge, jreqs, (judge or engine).generate(jreqs, jsamp), strict=True):
            score, _, err = parse_judgment(req.prefill + jc.text, jc.finish_reason)
            graded[i].update(judge_score=score, why=err, correct=score is not None and score >= judge_min)
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "correct": 0})
    for g in graded:
        for sk in g["skills"]:
            per[sk]["n"] += 1
            per[sk]["correct"] += int(g["correct"])
    for d in per.values():
        d["accuracy"] = round(d["correct"] / d["n"], 4)
    return dict(sorted(per.items())), graded


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


def decontaminated_recipe(recipe: str, rows: list[dict[str, Any]], out: Path) -> str:
    """The recipe with its evaluation set added to its decontamination (a generated row that is one
    of the evaluation questions, or a light edit of one, is a reject), written beside the run's
    files: the student is never trained on its own test."""
    import yaml

    from synthflow.recipe import load_recipe

    src = load_recipe(recipe)  # resolves a recipe name to its file, and validates it
    eval_file = out / "eval-questions.jsonl"
    eval_file.write_text(
        "".join(json.dumps({"id": i, "question": r["question"]}) + "\n" for i, r in enumerate(rows))
    )
    spec = f"{eval_file}:question:id"
    data = src.model_dump(mode="json", exclude_none=True)
    filters = []
    added = False
    for f in src.filters:
        entry = {"name": f.name, **f.params}
        if f.name == "decontaminate" and not added:
            entry["benchmarks"] = [*entry.get("benchmarks", ["humaneval"]), spec]
            added = True
        filters.append(entry)
    if not added:
        filters.insert(next((i for i, f in enumerate(filters) if f["name"] in ("shirker", "thresholds")), len(filters)),
                       {"name": "decontaminate", "benchmarks": [spec]})  # fmt: skip
    data["filters"] = filters
    path = out / f"{src.name}-decontaminated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run_target(
    student: Any,
    rows: list[dict[str, Any]],
    recipe: str,
    rounds: int,
    out: Path,
    generate: Any,
    sampling: Sampling | None = None,
    log: Any = print,
    judge: Any = None,
    grader: str = "auto",
    judge_min: float = JUDGE_MIN,
) -> dict[str, Any]:
    """``rounds`` of evaluate -> weights -> generate. ``generate(recipe, sets)`` runs the recipe with
    ``--set`` overrides and returns its summary. Writes ``target.json`` (and per round a skills file
    and ``eval-round<N>.jsonl``, every graded answer) under ``out`` and returns it. The student (and
    the judge) are closed, if they can be, before each generation, which loads its own engine."""
    out.mkdir(parents=True, exist_ok=True)
    sampling = sampling or Sampling(temperature=0.0, top_p=1.0, max_tokens=256)
    recipe = decontaminated_recipe(recipe, rows, out)
    history = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        acc, graded = evaluate(student, rows, sampling, judge=judge, grader=grader, judge_min=judge_min)
        for e in (student, judge):
            if hasattr(e, "close"):
                e.close()
        w = weights(acc)
        by = dict(sorted(Counter(g["grader"] for g in graded).items()))
        log(
            f"round {rnd}: student accuracy per skill ({len(rows)} questions graded by "
            f"{', '.join(f'{k} {v}' for k, v in by.items())}; {time.perf_counter() - t0:.1f} s)"
        )
        log(table(acc, w))
        ev = out / f"eval-round{rnd}.jsonl"
        ev.write_text("".join(json.dumps(g) + "\n" for g in graded))
        sk = skills_file(out / f"skills-round{rnd}.json", acc)
        sets = [f"generator.options.skills_file={sk}", f"generator.options.skill_weights={json.dumps(w)}"]
        summary = generate(recipe, sets)
        drawn = skills_drawn(Path(summary["path"])) if summary.get("path") else {}
        history.append({"round": rnd, "accuracy": acc, "weights": w, "graders": by, "run": summary.get("path"),
                        "accepted": (summary.get("counts") or {}).get("accepted"), "skills_drawn": drawn})  # fmt: skip
        log(f"round {rnd}: generated with these weights: {summary.get('path')}")
        if drawn:
            log("  skills drawn: " + ", ".join(f"{k} {v}" for k, v in drawn.items()))
    result = {"recipe": recipe, "eval_rows": len(rows), "rounds": history}
    tmp = out / "target.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out / "target.json")
    return result
