"""The independent answer check: the engine answers each row's task again without the proposed
answer in view; wrong answers, labels and classifications are rejected with their reason, the correct
ones kept, and answers the passage does not support are rejected as ungrounded."""

from __future__ import annotations

import pytest

from filters.answer_check import AnswerCheck
from synthflow.answers import AnswerTask, agrees, label_of, supported
from synthflow.engines.pool import EnginePool
from synthflow.filtering import FilterContext
from synthflow.record import Record

from .helpers import make_generator

SCRIPT = "fake_answer_check.json"
LIBRARY = "The city library was founded by Mary Hale and opened in 1887. It holds 40,000 books."


def _check(tmp_path, recipe: str, rows: list[dict], **params):
    gen, _ = make_generator(tmp_path, recipe, SCRIPT)
    pool = EnginePool()
    f = AnswerCheck({"k": 3, **params}, FilterContext(recipe=gen.recipe, generator=gen, engines=pool))
    recs = [Record(id=f"r{i}", recipe=recipe, generator=gen.name, seed_id="s", fields=dict(fields))
            for i, fields in enumerate(rows)]  # fmt: skip
    try:
        res = f(recs)
        asked = [m["content"] for c in pool.roles["checker"].engine.requests for m in c.messages]
    finally:
        pool.close()
    return {j.record.id: j.reason for j in res.rejects}, {r.id: r for r in res.kept}, asked


def test_agentinstruct_wrong_answer_is_rejected_and_the_right_one_kept(tmp_path):
    text = "The bridge over the river opened in 1932 after four years of work."
    rows = [
        {"instruction": "When did it open?", "response": "1928.", "ai_transformed_text": text},
        {"instruction": "When did it open?", "response": "1932.", "ai_transformed_text": text},
        # the re-answers agree with it, but the passage never says it: not grounded
        {"instruction": "Where was the treaty signed?", "response": "in Lisbon", "ai_transformed_text": text},
    ]
    rejected, kept, asked = _check(tmp_path, "agentinstruct", rows)
    assert rejected == {
        "r0": "verify:answer_disagrees:number (agreement 0.00)",
        "r2": "verify:ungrounded:span",
    }
    assert set(kept) == {"r1"} and kept["r1"].fields["answer_agreement"] == 1.0
    assert kept["r1"].fields["answer_checks"] == ["1932"] * 3
    assert not any("1928" in a for a in asked)  # the proposed answer is never shown


def test_bonito_wrong_label_and_wrong_span_are_rejected(tmp_path):
    yes_no = {"task_type": "yes_no_qa", "bonito_passage": LIBRARY,
              "instruction": "Does the passage say the library opened in 1900?"}  # fmt: skip
    span = {
        "task_type": "extractive_qa",
        "bonito_passage": LIBRARY,
        "instruction": "Who founded the library?",
    }
    rows = [
        {**yes_no, "response": "Yes, it opened in 1900.", "bonito_label": "Yes"},
        {**yes_no, "response": "No, it opened in 1887.", "bonito_label": "No"},
        {**span, "response": "1887"},  # a span of the passage, but not what was asked
        {**span, "response": "Mary Hale"},
        {
            "task_type": "summarization",
            "bonito_passage": LIBRARY,
            "instruction": "Summarize.",
            "response": "x",
        },
    ]
    rejected, kept, _ = _check(tmp_path, "bonito", rows)
    assert rejected == {
        "r0": "verify:answer_disagrees:label (agreement 0.00)",
        "r2": "verify:answer_disagrees:span (agreement 0.00)",
    }
    assert set(kept) == {"r1", "r3", "r4"}  # a summary is left to its own checks
    assert "answer_agreement" not in kept["r4"].fields


def test_self_instruct_wrong_classification_is_rejected(tmp_path):
    base = {"instruction": "Classify the sentiment of the review.", "si_is_classification": True,
            "input": "The food was cold and the waiter rude.", "si_labels": ["Negative", "Positive"]}  # fmt: skip
    rows = [
        {**base, "output": "Positive"},
        {**base, "output": "Negative"},
        {**base, "si_is_classification": False, "output": "anything"},  # not a classification: not checked
    ]
    rejected, kept, asked = _check(tmp_path, "self_instruct", rows)
    assert rejected == {"r0": "verify:answer_disagrees:label (agreement 0.00)"}
    assert set(kept) == {"r1", "r2"}
    assert any("Answer with one of: Negative, Positive." in a for a in asked)


def test_a_single_known_label_is_not_shown_as_the_hint(tmp_path):
    gen, _ = make_generator(tmp_path, "self_instruct", SCRIPT)
    t = gen.answer_task({"instruction": "Classify.", "input": "x", "output": "Spam", "si_is_classification": True,
                         "si_labels": ["Spam"]})  # fmt: skip
    assert "Spam" not in t.hint and t.labels == ()


@pytest.mark.parametrize(
    ("kind", "answer", "other", "want"),
    [
        ("number", "The answer is 1,200.", "so 1200 in all", True),
        ("number", "418", "17 x 24 = 408", False),
        ("label", "Yes, it did.", "yes", True),
        ("label", "Yes", "Yesterday it opened", False),
        ("span", "Mary Hale", "It was founded by Mary Hale.", True),
        ("span", "Hale", "Mary Halevy", False),
        ("text", "The library opened in 1887 in the city.", "The library opened in 1887.", True),
    ],
)
def test_agreement_by_kind(kind, answer, other, want):
    assert (
        agrees(AnswerTask("q", answer, kind, labels=("yes", "no") if kind == "label" else ()), other) is want
    )


def test_grounding():
    assert supported(AnswerTask("q", "Mary Hale", "span", LIBRARY, grounded=True))
    assert not supported(AnswerTask("q", "John Hale", "span", LIBRARY, grounded=True))
    assert supported(
        AnswerTask("q", "45", "number", LIBRARY, grounded=True)
    )  # may be computed: re-answers decide
    assert label_of("No, it opened in 1887.", ("yes", "no")) == "no"


def test_a_long_answer_is_grounded_by_its_own_words_not_by_the_passage_length():
    passage = (
        "ANNA: I think the water cycle is the most important process on Earth, because the sun lifts "
        "water from the oceans and rivers into the air every day. BEN: But without clouds, rain and "
        "rivers carrying water back to the sea, that vapour would never return to us, so every step "
        "matters equally in the cycle."
    )
    said = "Ben says that without clouds, rain and rivers the vapour would never return to us."
    made_up = "Ben says the moon pulls the vapour into space where comets freeze it into ice forever."
    assert supported(AnswerTask("q", said, "text", passage, grounded=True))
    assert not supported(AnswerTask("q", made_up, "text", passage, grounded=True))
