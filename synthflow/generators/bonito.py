"""Bonito-style conditional task generation (Nayak et al., 2024, "Learning to Generate Instruction
Tuning Datasets for Zero-Shot Task Adaptation"): unannotated passages (the user's own documents,
``source: docs`` or ``source: table``) become instruction tasks of chosen types, each with its answer
grounded in the passage.

Bonito fine-tunes a model to map (task type, passage) to (task, answer); here the recipe's model is
prompted with the task type's rule. Each item draws the next task type of the recipe's list (round
robin, so the types come out even), and one engine call per batch writes ``Task:`` and ``Answer:``.

Answers are checked against the passage, not against the model's own say-so
(``verify`` rejects, ``bonito:<why>``). Every task has 3+ words and its answer is not the task
repeated; then, by type:

- extractive QA: the answer must be a span of the passage (whole words, case and spacing aside), of
  1..``max_span_words`` words, and the question must not already contain it;
- yes/no QA: the answer starts with Yes or No (the label is a column; the summary counts labels, so a
  model that always says Yes shows);
- NLI and sentiment: the answer is one of the type's labels;
- summarization: shorter than the passage, and not a copy of a stretch of it;
- title generation: one line of 1..12 words that is not a sentence copied from the passage.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthflow.answers import AnswerTask
from synthflow.engines.base import Sampling
from synthflow.generators.base import Generator, Item, ParseError, parse_or_reject
from synthflow.record import Reject, StageResult
from synthflow.registry import did_you_mean, register
from synthflow.seeds import Seed
from synthflow.text import words


@dataclass(frozen=True)
class TaskType:
    title: str
    rule: str
    check: str  # span | yes_no | labels | summary | title
    labels: tuple[str, ...] = ()


TASK_TYPES: dict[str, TaskType] = {
    "extractive_qa": TaskType(
        "extractive question answering",
        "Ask a question whose answer is a short phrase copied exactly from the passage. "
        "The answer must be only that phrase, word for word as in the passage.",
        "span",
    ),
    "yes_no_qa": TaskType(
        "yes/no question answering",
        "Ask a question about the passage that is answered by Yes or No. "
        "The answer starts with Yes or No, then gives the reason from the passage in one sentence.",
        "yes_no",
    ),
    "nli": TaskType(
        "natural language inference",
        "Write a hypothesis about the passage and ask whether the passage entails it, contradicts it, "
        "or neither. The answer is one word: entailment, contradiction or neutral.",
        "labels",
        ("entailment", "contradiction", "neutral"),
    ),
    "sentiment": TaskType(
        "sentiment classification",
        "Ask whether the tone of the passage is positive, negative or neutral. "
        "The answer is one word: positive, negative or neutral.",
        "labels",
        ("positive", "negative", "neutral"),
    ),
    "summarization": TaskType(
        "summarization",
        "Ask for a summary of the passage in one or two sentences. The answer is that summary, in your own words.",
        "summary",
    ),
    "title_generation": TaskType(
        "title generation",
        "Ask for a short title for the passage. The answer is only the title, at most 12 words.",
        "title",
    ),
}

_WORD = re.compile(r"\w+", re.UNICODE)
_ANSWER_LINE = re.compile(r"^\s*\**\s*Answer\s*\**\s*:\s*\**\s*", re.M | re.I)
_TASK_LINE = re.compile(r"^\s*\**\s*Task\s*\**\s*:", re.M | re.I)
# the prompt's own scaffolding inside a task ("Sentiment Classification Output: Task: task"); a task
# may say "answer:" ("... and answer: when was it built?"), so only Task:/Output: count
_SCAFFOLD = re.compile(r"\b(task|output)\s*:", re.I)
# words that only say what kind of task it is: a task made of nothing else is a label, not a task
_LABEL_WORDS = frozenset(
    {"task", "tasks", "output", "type", "label", "labels", "the", "a", "an"}
    | {w for tt in TASK_TYPES.values() for w in re.findall(r"\w+", tt.title.lower())}
)


def squash(text: str) -> str:
    return " ".join(text.split())


def parse_task(text: str) -> tuple[str, str]:
    """The completion after the prefilled ``Task:``: (task, answer). A further ``Task:`` (the model
    going on to a second task) ends the answer."""
    m = _ANSWER_LINE.search(text)
    if m is None:
        raise ParseError("no_answer")
    task = squash(text[: m.start()])
    rest = text[m.end() :]
    nxt = _TASK_LINE.search(rest)
    answer = (rest[: nxt.start()] if nxt else rest).strip()
    if not task:
        raise ParseError("no_task")
    if not answer:
        raise ParseError("no_answer")
    return task, answer


def find_span(passage: str, answer: str) -> int | None:
    """Where ``answer`` occurs in ``passage`` as whole words (case and spacing aside; the answer's
    surrounding quotes and final punctuation are ignored), or None."""
    a = squash(answer).strip(" \"'`“”‘’").rstrip(".,;:!?").strip(" \"'`“”‘’")
    if not _WORD.search(a):
        return None
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in a.split()) + r"(?!\w)"
    m = re.search(pattern, passage, re.I)
    return m.start() if m else None


def check_answer(tt: TaskType, passage: str, task: str, answer: str, max_span_words: int) -> dict[str, Any]:
    """The grounded checks of one task type: the row's extra fields, or ValueError(reason)."""
    first = (words(answer) or [""])[0]
    if len(words(task)) < 3:  # a heading ("Sentiment Classification"), not a task
        raise ValueError("task_too_short")
    if words(answer) == words(task):
        raise ValueError("answer_is_task")
    if _SCAFFOLD.search(task):  # the template's "Task:"/"Output:" copied into the task
        raise ValueError("scaffold_in_task")
    if all(w.lower() in _LABEL_WORDS for w in words(task)):  # "Sentiment classification task"
        raise ValueError("task_is_a_label")
    if tt.check == "span":
        n = len(words(answer))
        if n > max_span_words:
            raise ValueError("span_too_long")
        start = find_span(passage, answer)
        if start is None:
            raise ValueError("answer_not_in_passage")
        if find_span(task, answer) is not None:
            raise ValueError("question_gives_answer")
        return {"bonito_answer_start": start}
    if tt.check == "yes_no":
        if first not in ("yes", "no"):
            raise ValueError("not_yes_no")
        return {"bonito_label": first}
    if tt.check == "labels":
        if first not in tt.labels or len(words(answer)) > 3:
            raise ValueError("bad_label")
        return {"bonito_label": first, "response": first}
    pw, aw = words(passage), words(answer)
    if tt.check == "summary":
        if len(aw) < 5:
            raise ValueError("summary_too_short")
        if len(aw) >= 0.8 * len(pw):
            raise ValueError("summary_too_long")
        if find_span(passage, answer) is not None or _copied(pw, aw):
            raise ValueError("copies_passage")
        return {}
    # title
    if "\n" in answer.strip() or not 1 <= len(aw) <= 12:
        raise ValueError("bad_title")
    if len(aw) >= 6 and find_span(passage, answer) is not None:
        raise ValueError("copies_passage")
    return {"response": squash(answer).strip(" \"'“”")}


def _copied(pw: list[str], aw: list[str], n: int = 8) -> bool:
    """Most of the answer's word 8-grams are the passage's: a copied stretch with small edits."""
    if len(aw) < n:
        return False
    grams = {tuple(pw[i : i + n]) for i in range(len(pw) - n + 1)}
    mine = [tuple(aw[i : i + n]) for i in range(len(aw) - n + 1)]
    return sum(g in grams for g in mine) / len(mine) > 0.5


class BonitoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_types: list[str] = Field(default_factory=lambda: list(TASK_TYPES), min_length=1)
    max_span_words: int = Field(20, ge=1)
    min_passage_words: int = Field(25, ge=1)

    @field_validator("task_types")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in TASK_TYPES:
                raise ValueError(f"unknown task type {t!r}; {did_you_mean(t, list(TASK_TYPES))}")
        return v


@register("generator", "bonito")
class Bonito(Generator):
    name = "bonito"
    prompts: ClassVar[dict[str, str]] = {"task": "bonito/task.jinja2"}
    Options = BonitoOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "response": pa.string(),
        "task_type": pa.string(),
        "bonito_passage": pa.string(),
        "bonito_source": pa.string(),
        "bonito_answer_start": pa.int32(),
        "bonito_label": pa.string(),
    }
    text_field = "instruction"

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        # passages: prose chunks long enough to ask about (code chunks are AgentInstruct's)
        opts = self.validate_options(recipe.generator.options, "generator.options")
        prose = [
            s
            for s in seeds
            if s.data.get("doc_kind") != "code" and len(s.text.split()) >= opts.min_passage_words
        ]
        super().__init__(recipe, prose or seeds, run_id)

    def task_type(self, item: Item) -> str:
        return self.opts.task_types[item.index % len(self.opts.task_types)]

    def context(self, item: Item) -> dict[str, Any]:
        tt = TASK_TYPES[self.task_type(item)]
        return {"passage": squash(item.seed.text), "task_type_name": tt.title, "task_type_rule": tt.rule}

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        out = StageResult()
        tmpl = self.templates["task"]
        reqs = [self.request("task", tmpl.render(**self.context(it)), it.sample) for it in items]
        for it, comp in zip(items, self.call(engine, "task", reqs, sampling), strict=True):
            rec = self.new_record(it, "task", comp, engine, sampling)
            name = self.task_type(it)
            passage = squash(it.seed.text)
            rec.fields = {
                "task_type": name,
                "bonito_passage": passage,
                "bonito_source": f"{it.seed.data.get('source', '')}#{it.seed.data.get('chunk', 0)}",
                "bonito_answer_start": None,
                "bonito_label": None,
            }
            got = parse_or_reject(rec, parse_task, comp.text, out)
            if got is None:
                continue
            task, answer = got
            rec.fields.update(instruction=task, response=answer)
            try:
                rec.fields.update(
                    check_answer(TASK_TYPES[name], passage, task, answer, self.opts.max_span_words)
                )
            except ValueError as e:
                out.rejects.append(Reject(rec, "verify", f"bonito:{e}:{name}"))
                continue
            rec.messages = [
                {"role": "user", "content": f"{passage}\n\n{task}"},
                {"role": "assistant", "content": rec.fields["response"]},
            ]
            out.kept.append(rec)
        return out

    response_field = "response"

    def answer_task(self, fields: dict[str, Any]) -> AnswerTask | None:
        """Spans, yes/no and labels are answered again from the passage (summaries and titles are
        checked by their own rules)."""
        tt = TASK_TYPES[fields["task_type"]]
        passage, question = fields["bonito_passage"], fields["instruction"]
        if tt.check == "span":
            return AnswerTask(question, fields["response"], "span", passage, grounded=True,
                              hint="Answer with a short phrase copied word for word from the passage.")  # fmt: skip
        if tt.check == "yes_no":
            return AnswerTask(question, fields.get("bonito_label") or fields["response"], "label", passage,
                              labels=("yes", "no"), hint="Answer Yes or No.")  # fmt: skip
        if tt.check == "labels":
            return AnswerTask(question, fields.get("bonito_label") or fields["response"], "label", passage,
                              labels=tt.labels, hint=f"Answer with one of: {', '.join(tt.labels)}.")  # fmt: skip
        return None

    def apply_revision(self, rec: Any, text: str) -> None:
        """A revised answer passes the same grounded checks as a generated one."""
        answer = text.strip()
        if not answer:
            raise ParseError("empty")
        f = rec.fields
        try:
            extra = check_answer(TASK_TYPES[f["task_type"]], f["bonito_passage"], f["instruction"], answer,
                                 self.opts.max_span_words)  # fmt: skip
        except ValueError as e:
            raise ParseError(f"bonito:{e}") from None
        f.update(response=answer, **extra)
        rec.messages = [rec.messages[0], {"role": "assistant", "content": f["response"]}]

    def summary(self, accepted: list[Any]) -> dict[str, Any]:
        labels: dict[str, Counter] = {}
        for r in accepted:
            if r.fields.get("bonito_label"):
                labels.setdefault(r.fields["task_type"], Counter())[r.fields["bonito_label"]] += 1
        return {
            "task types": dict(Counter(r.fields["task_type"] for r in accepted)),
            "labels": {k: dict(v) for k, v in labels.items()},
        }

    def card_section(self) -> str:
        return (
            "## Bonito provenance\n\n"
            "- `task_type`: the task type asked for; `bonito_passage`, `bonito_source`: the passage and its file#chunk\n"
            "- `instruction`, `response`: the task and its answer (the user turn is the passage, then the task)\n"
            "- `bonito_answer_start`: extractive QA, where the answer span starts in `bonito_passage`\n"
            "- `bonito_label`: yes/no, NLI and sentiment labels\n"
        )
