"""Bonito-style task generation: tasks of chosen types from unannotated passages, with
answers checked against the passage rather than taken on the model's word."""

from __future__ import annotations

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.generators.base import ParseError
from synthflow.generators.bonito import TASK_TYPES, check_answer, find_span, parse_task
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import ROOT

PASSAGE = (
    "The Hartwell Library opened in 1887 in the town of Millbrook. Its first librarian, Ada Quince, "
    "bought four hundred books with money raised by a town fair. A fire in 1923 destroyed the east "
    "wing, but volunteers saved most of the collection by carrying it across the street to the church. "
    "Today the library lends about thirty thousand books a year and runs a reading club for children "
    "every Saturday morning."
)

# per task type: (a grounded task and answer, one that must be rejected, the reason)
CASES = {
    "extractive_qa": (
        " Who was the library's first librarian?\nAnswer: Ada Quince",
        " Who was the library's first librarian?\nAnswer: Mary Smith",
        "bonito:answer_not_in_passage:extractive_qa",
    ),
    "yes_no_qa": (
        " Did a fire destroy part of the library?\nAnswer: Yes, a fire in 1923 destroyed the east wing.",
        " Did a fire destroy part of the library?\nAnswer: Probably, fires were common then.",
        "bonito:not_yes_no:yes_no_qa",
    ),
    "nli": (
        " Hypothesis: the library was founded in the twentieth century. Entailment, contradiction or neutral?"
        "\nAnswer: Contradiction.",
        " Hypothesis: the library is old. Entailment, contradiction or neutral?\nAnswer: It is true because of 1887.",
        "bonito:bad_label:nli",
    ),
    "sentiment": (
        " Is the tone of the passage positive, negative or neutral?\nAnswer: neutral",
        " Is the tone of the passage positive, negative or neutral?\nAnswer: happy",
        "bonito:bad_label:sentiment",
    ),
    "summarization": (
        " Summarize the passage in one sentence.\nAnswer: A small-town library from 1887 survived a fire "
        "thanks to volunteers and still lends many books.",
        " Summarize the passage in one sentence.\nAnswer: The Hartwell Library opened in 1887 in the town of "
        "Millbrook. Its first librarian, Ada Quince, bought four hundred books with money raised by a fair.",
        "bonito:copies_passage:summarization",
    ),
    "title_generation": (
        ' Give the passage a short title.\nAnswer: "The Library That Survived the Fire"',
        " Give the passage a short title.\nAnswer: The Story Of How A Small Library In A Town Survived A "
        "Terrible Fire And Grew",
        "bonito:bad_title:title_generation",
    ),
}
ORDER = list(TASK_TYPES)


def _gen(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "library.txt").write_text(PASSAGE)
    data = yaml.safe_load((ROOT / "recipes" / "bonito.yaml").read_text())
    (tmp_path / "none.json").write_text("[]")
    data["engine"] = {"name": "fake", "options": {"script": str(tmp_path / "none.json")}}
    data["seeds"] = [{"source": "docs", "path": str(docs), "chunk_words": 200}]
    p = tmp_path / "bonito.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    return registry.get("generator", "bonito")(r, extract_seeds(r.seeds))


def _script() -> list[dict]:
    """Item i (one passage: sample i) gets task type i % 6; items 0-5 answer well, 6-11 badly."""
    rules = []
    for k, name in enumerate(ORDER):
        good, bad, _ = CASES[name]
        replies = [""] * 12
        replies[k], replies[k + 6] = good, bad
        rules.append({"match": f"Task type: {TASK_TYPES[name].title}\\.", "reply": replies})
    return rules


def test_bonito_grounded_tasks_and_rejects(tmp_path):
    gen = _gen(tmp_path)
    items = gen.plan(0, 12)
    assert [gen.task_type(it) for it in items] == ORDER * 2  # round robin: the types come out even
    eng = FakeEngine(_script())
    res = gen.run(items, eng, Sampling())
    assert eng.calls == 1  # one engine call for the batch
    kept = {r.fields["task_type"]: r for r in res.kept}
    assert sorted(kept) == sorted(ORDER)
    assert sorted(j.reason for j in res.rejects) == sorted(c[2] for c in CASES.values())
    ex = kept["extractive_qa"].fields
    assert ex["response"] == "Ada Quince" and PASSAGE[ex["bonito_answer_start"] :].startswith("Ada Quince")
    assert kept["yes_no_qa"].fields["bonito_label"] == "yes"
    assert kept["nli"].fields["response"] == "contradiction"  # the label, not the model's punctuation
    assert kept["title_generation"].fields["response"] == "The Library That Survived the Fire"
    m = kept["summarization"].messages
    assert (
        m[0]["content"] == f"{PASSAGE}\n\nSummarize the passage in one sentence."
        and m[1]["role"] == "assistant"
    )
    assert all(r.fields["bonito_source"] == "library.txt#0" for r in res.kept)
    s = gen.summary(res.kept)
    assert s["task types"] == dict.fromkeys(ORDER, 1) and s["labels"]["yes_no_qa"] == {"yes": 1}


def test_extractive_answers_must_be_spans_of_the_passage():
    tt = TASK_TYPES["extractive_qa"]
    q = "Who bought the first books?"
    assert check_answer(tt, PASSAGE, q, "ada  QUINCE.", 20) == {"bonito_answer_start": PASSAGE.index("Ada")}
    assert check_answer(tt, PASSAGE, q, '"a town fair"', 20)["bonito_answer_start"] == PASSAGE.index(
        "a town fair"
    )
    for answer, why in [
        ("Ada Q", "answer_not_in_passage"),  # part of a word is not a span
        ("librar", "answer_not_in_passage"),
        ("Ada Quince bought books", "answer_not_in_passage"),  # words left out are not a span
        ("...", "answer_not_in_passage"),  # nothing to find
        (PASSAGE, "span_too_long"),  # the whole passage is not an answer
    ]:
        with pytest.raises(ValueError, match=why):
            check_answer(tt, PASSAGE, q, answer, 20)
    for task, answer, why in [("Sentiment Classification", "positive", "task_too_short"),
                              ("Sentiment Classification Output: Task: task", "positive", "scaffold_in_task"),
                              ("The sentiment classification task", "positive", "task_is_a_label"),
                              ("The Water Cycle title", "the water cycle Title", "answer_is_task")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            check_answer(TASK_TYPES["title_generation"], PASSAGE, task, answer, 20)
    with pytest.raises(ValueError, match="question_gives_answer"):
        check_answer(tt, PASSAGE, "Was Ada Quince the first librarian?", "Ada Quince", 20)
    assert find_span("a b c", "b") == 2 and find_span("abc", "b") is None


def test_parse_task():
    assert parse_task(" Why?\nAnswer: Because.\nTask: another\nAnswer: x") == ("Why?", "Because.")
    assert parse_task(" Why\nis it?\n**Answer:** Because") == ("Why is it?", "Because")
    for bad, why in [
        (" Why?", "no_answer"),
        (" \nAnswer: yes", "no_task"),
        (" Why?\nAnswer:  ", "no_answer"),
    ]:
        with pytest.raises(ParseError, match=why):
            parse_task(bad)


def test_unknown_task_type_is_one_line(tmp_path):
    from synthflow.errors import UserError

    data = yaml.safe_load((ROOT / "recipes" / "bonito.yaml").read_text())
    data["generator"]["options"]["task_types"] = ["extractive_q"]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"generator\.options\.task_types: .*did you mean 'extractive_qa'"):
        load_recipe(p)
