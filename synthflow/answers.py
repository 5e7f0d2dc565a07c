"""Comparing an answer with independent answers to the same task: numbers by value (math-verify),
labels and spans by normalized match, free text by ROUGE-L. A generator says what its rows ask and
answer (:class:`AnswerTask`); the ``answer_check`` filter asks the engine again, without the proposed
answer in view, and keeps a row only when enough of the independent answers agree with it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from synthflow.text import normalize

Kind = Literal["number", "label", "span", "text"]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class AnswerTask:
    """What a row asks and answers. ``question`` is shown to the independent answerer (with
    ``passage`` when the task is about one, and ``labels`` when it must pick one of them); ``answer``
    is the row's own answer, never shown. ``grounded``: the answer must be supported by the passage."""

    question: str
    answer: str
    kind: Kind
    passage: str | None = None
    labels: tuple[str, ...] = ()
    grounded: bool = False
    hint: str = field(default="")  # how to answer, e.g. "Answer with Yes or No."


def last_number(text: str) -> str | None:
    nums = _NUMBER.findall(text or "")
    return nums[-1].replace(",", "") if nums else None


def label_of(text: str, labels: tuple[str, ...] = ()) -> str:
    """The label an answer gives: one of ``labels`` it starts with (normalized), else its first line
    normalized."""
    t = normalize((text or "").strip().splitlines()[0] if (text or "").strip() else "")
    for lab in sorted(labels, key=len, reverse=True):
        n = normalize(lab)
        if t == n or t.startswith(n + " "):
            return n
    return t


def agrees(task: AnswerTask, other: str, rouge_min: float = 0.5) -> bool:
    """Does an independent answer agree with the row's answer?"""
    if task.kind == "number":
        from synthflow.mathcheck import equivalent

        mine, theirs = last_number(task.answer), last_number(other)
        return mine is not None and theirs is not None and equivalent(mine, theirs)
    if task.kind == "label":
        mine = label_of(task.answer, task.labels)
        return bool(mine) and label_of(other, task.labels) == mine
    if task.kind == "span":  # the independent answer gives the same phrase (it may say more)
        mine, theirs = normalize(task.answer), normalize(other)
        return bool(mine) and f" {mine} " in f" {theirs} "
    return rouge_l(task.answer, other) >= rouge_min


def rouge_l(a: str, b: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(a, b)["rougeL"].fmeasure


def supported(task: AnswerTask) -> bool:
    """Is the row's answer supported by its passage? A span or a short phrase must occur in it (whole
    words, case and punctuation aside); a label (yes/no, NLI, sentiment) is decided by the re-answers;
    a longer free-text answer must take most of its words from the passage (the LCS covers at least half of the answer)."""
    if task.passage is None or task.kind in ("label", "number"):
        return True  # decided by the re-answers (a number may be computed from the passage)
    ans, passage = normalize(task.answer), normalize(task.passage)
    if not ans:
        return False
    if task.kind == "span" or len(ans.split()) <= 8:
        return f" {ans} " in f" {passage} "
    from rouge_score import rouge_scorer

    score = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(task.passage, task.answer)["rougeL"]
    return score.precision >= 0.5  # LCS over the answer's words (the passage is the target)
