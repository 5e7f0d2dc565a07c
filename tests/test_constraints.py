"""IFEval-style constraints: the catalogue, the combination rules, the checks (and how a response
could game them), the ``constraints`` generator and verifier on a scripted engine."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import yaml

from filters.constraints import ConstraintCheck
from synthflow import constraints as cat
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.record import Record

from .conftest import ROOT

ROBOT = "Write a short story about a brave little robot."

# id -> (kwargs, a response that follows it, a response that breaks it)
CASES: dict[str, tuple[dict, str, str]] = {
    "punctuation:no_comma": ({}, "I like tea and coffee.", "I like tea, and coffee."),
    "change_case:english_lowercase": (
        {},
        "i like tea and coffee very much because they are warm drinks.",
        "I like tea and coffee very much because they are warm drinks.",
    ),
    "change_case:english_capital": (
        {},
        "I LIKE TEA AND COFFEE VERY MUCH BECAUSE THEY ARE WARM DRINKS.",
        "I like tea and coffee very much because they are warm drinks.",
    ),
    "keywords:existence": ({"keywords": ["robot", "brave"]}, "The brave robot won.", "The robot won."),
    "keywords:frequency": (
        {"keyword": "robot", "relation": "at least", "frequency": 2},
        "A robot met another robot.",
        "A robot met a cat.",
    ),
    "keywords:forbidden_words": ({"forbidden_words": ["very"]}, "I like it a lot.", "I like it very much."),
    "keywords:letter_frequency": (
        {"letter": "z", "let_relation": "less than", "let_frequency": 2},
        "A lazy cat sleeps.",
        "Zebras zigzag in the zoo.",
    ),
    "language:response_language": (
        {"language": "en"},
        "The cat is sleeping on the table all day long and nobody wakes it.",
        "Le chat dort sur la table toute la journée et personne ne le réveille.",
    ),
    "length_constraints:number_words": (
        {"relation": "less than", "num_words": 10},
        "A short answer of six words.",
        "This answer is much too long because it goes on and on and on.",
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "First part of the answer.\n***\nSecond part of the answer.",
        "Only one part of the answer.",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "today"},
        "Today we walk to the park.\n\nThen we rest under a tree.",
        "We walk to the park today.\n\nThen we rest under a tree.",
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Send it to [name] at [address].",
        "Send it to John at home.",
    ),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        "See you soon.\n\nP.S. Bring the map.",
        "See you soon.",
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        "Two reasons:\n- it is cheap\n- it is fast",
        "Three reasons:\n- it is cheap\n- it is fast\n- it is fun",
    ),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Sure, why not."),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 1},
        "This is *the important part* of it.",
        "Nothing is highlighted here.",
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nThe start.\nSection 2\nThe end.",
        "Section 1\nThe start and the end.",
    ),
    "detectable_format:json_format": (
        {},
        '{"name": "robot", "brave": true}',
        'Here it is: {"name": "robot"}',
    ),
    "detectable_format:title": (
        {},
        "<<The Brave Robot>>\nOnce upon a time.",
        "The Brave Robot\nOnce upon a time.",
    ),
    "combination:two_responses": (
        {},
        "The robot was brave.\n******\nThe robot was bold.",
        "The robot was brave.",
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": ROBOT},
        ROBOT + " Once a robot saved a cat.",
        "Once a robot saved a cat.",
    ),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "That is all. Any other questions?",
        "Any other questions? That is all.",
    ),
    "startend:quotation": ({}, '"The robot was brave."', "The robot was brave."),
}


def _row(i: int, cid: str, kwargs: dict, response: str, prompt: str = ROBOT) -> Record:
    return Record(
        id=f"r{i}",
        recipe="t",
        generator="constraints",
        seed_id="s",
        item=i,
        fields={
            "instruction": prompt,
            "response": response,
            "instruction_id_list": [cid],
            "kwargs": [cat.full_kwargs(kwargs)],
        },
    )


def _verify(rows: list[Record]):
    f = ConstraintCheck()
    return f, f(rows)


def test_the_catalogue_is_ifeval_without_the_checks_that_need_a_download():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    assert set(CASES) == set(cat.catalogue())
    left_out = set(INSTRUCTION_DICT) - set(cat.catalogue())
    assert left_out == {"length_constraints:number_sentences", "change_case:capital_word_frequency"}


@pytest.mark.parametrize("cid", sorted(CASES))
def test_each_constraint_keeps_a_response_that_follows_it_and_rejects_one_that_breaks_it(cid):
    kwargs, good, bad = CASES[cid]
    f, res = _verify([_row(0, cid, kwargs, good), _row(1, cid, kwargs, bad)])
    assert [r.id for r in res.kept] == ["r0"], res.rejects and res.rejects[0].record.fields
    assert [j.reason for j in res.rejects] == [f"verify:constraint_failed:{cid}"]
    assert res.kept[0].fields["constraint_results"] == [True]
    assert res.rejects[0].record.fields["constraint_results"] == [False]
    assert f.summary() == {"checked": {cid: 2}, "passed": {cid: 1}}
    # IFEval's own strict check agrees on both
    assert cat.ifeval_check(cid, kwargs, good, ROBOT) and not cat.ifeval_check(cid, kwargs, bad, ROBOT)


def test_a_row_fails_on_its_first_broken_constraint_and_records_each_verdict():
    r = Record(id="r", recipe="t", generator="constraints", seed_id="s", fields={
        "instruction": ROBOT, "response": "the robot, was brave.",
        "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
        "kwargs": [cat.full_kwargs({}), cat.full_kwargs({})]})  # fmt: skip
    _, res = _verify([r])
    assert res.rejects[0].reason == "verify:constraint_failed:punctuation:no_comma"
    assert r.fields["constraint_results"] == [True, False]
    assert r.fields["constraint_failures"] == ["punctuation:no_comma:ifeval"]


# ---- gaming: each case as IFEval's reference treats it, or more strictly ----------------------
GAMED = [
    # (id, kwargs, response, IFEval's strict verdict, ours, why ours)
    ("keywords:existence", {"keywords": ["brave"]}, "The robot won. <!-- brave -->", True, False, "hidden"),
    ("keywords:existence", {"keywords": ["brave"]}, "The robot won.\n```\nbrave\n```", True, False, "hidden"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "That is all. <!-- Any other questions? -->", False, False, "ifeval"),
    ("detectable_format:json_format", {}, 'Sure! ```json\n{"a": 1}\n```', False, False, "ifeval"),
    ("detectable_format:json_format", {}, '{"a": 1}\nHope this helps.', False, False, "ifeval"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True, True, ""),
    # IFEval counts '*' bullets as bullets: so do we, with a space after the marker
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True, ""),
    # an '*emphasis*' line and a '---' rule are bullets to IFEval's regex, not to a reader
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "*Note* here\n- one", True, False, "bullets"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n---", True, False, "bullets"),
    # a word count padded with numbers and symbols
    ("length_constraints:number_words", {"relation": "at least", "num_words": 10},
     "Short answer here. 1 2 3 4 5 6 7 8 _ _", True, False, "non_words"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 10},
     "This answer has ten real words in it, all of them.", True, True, ""),
    ("punctuation:no_comma", {}, "", False, False, "empty"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\n<!-- P.S. hi -->", True, False, "hidden"),
    # a marker in the middle of a sentence is not a postscript (seen on the embedded model)
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "The Pacific is the largest ocean. P.P.S\n\nMore text", True, False, "postscript_inline"),
]  # fmt: skip


# found by an adversarial review of this verifier: each passes IFEval's strict check, none follows
# the phrasing a reader sees; (id, kwargs, response, why ours rejects it)
REVIEW = [
    ("detectable_format:constrained_response", {}, "My answer is yes. My answer is no. My answer is maybe.", "not_one_option"),
    ("combination:repeat_prompt", {"prompt_to_repeat": ROBOT}, ROBOT, "no_answer_after_request"),
    ("combination:repeat_prompt", {"prompt_to_repeat": ROBOT}, ROBOT.upper() + " THE END IS NEAR.", "not_word_for_word"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a color"}, "Name a colorful bird now please.", "no_answer_after_request"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "As Section 1 and Section 2 of the law say, robots are brave.", "sections"),
    ("detectable_format:multiple_sections", {"section_spliter": "Part", "num_sections": 2},
     "A CounterPart 1 and a SparePart 2.", "sections"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nOne part.\nSection 2\nTwo part.\nSection 3\nThree part.\nSection 4\nFour part.", "sections"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "The robot story.\n\n- - -\n\nThe end of it.\n\n* * *\n\nDone.", "bullets"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n-\nMore text\n-\nEnd", "bullets"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Story.\n- \u200b\n- .", "bullets"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- a cat\n- a dog\n1. c\n2. d\n3. e", "bullets"),
    ("combination:two_responses", {}, "The full answer is here.\n******\n\u200b", "hidden"),
    ("combination:two_responses", {}, "The answer is here.\n******\nthe answer  is here.", "two_responses"),
    ("detectable_format:json_format", {}, "null", "json_empty"),
    ("detectable_format:json_format", {}, "[]", "json_empty"),
    ("detectable_format:json_format", {}, "```json\n{}\n```", "json_empty"),
    ("detectable_format:json_format", {}, '"The robot was brave."', "json_empty"),
    ("detectable_format:json_format", {}, '{"a": Infinity}', "json_strict"),
    ("startend:quotation", {}, '""', "quotation"),
    ("startend:quotation", {}, '"One." The robot went home. "Two."', "quotation"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "P.S. hi\n\nThe robot was brave and the story is done.", "postscript_empty_or_first"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "The robot was brave.\nP.S.", "postscript_empty_or_first"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "The robot was brave.\nP.P.Something else entirely", "postscript_inline"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, "The bravery of the robotics lab.", "keyword_inside_a_word"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, "A story.\n\n[//]: # (robot brave)", "hidden"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, "A [story](https://x.org/robot-brave) about a tin man.", "hidden"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, "A story.<span hidden>robot brave</span>", "hidden"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, '<img alt="robot brave" src="x.png"> A story.', "hidden"),
    ("keywords:existence", {"keywords": ["robot", "brave"]}, "A story.\n~~~\nrobot brave\n~~~", "hidden"),
    ("keywords:frequency", {"keyword": "art", "relation": "at least", "frequency": 3}, "Start the party apart.", "keyword_inside_a_word"),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "really"]}, "It was **ver**y brave and kind.", "forbidden_word_split"),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "really"]}, "It was brave and real\u200bly kind.", "hidden"),
    ("keywords:forbidden_words", {"forbidden_words": ["very"]}, "It was v\u0435ry brave.", "lookalike_letters"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "The robot *.* was brave.", "empty_highlight"),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}, "A robot. [] [] []", "empty_placeholder"),
    ("detectable_content:number_placeholders", {"num_placeholders": 1}, "See [the docs](https://x.org).", "empty_placeholder"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 40}, "\u3164".join(["word"] * 200), "hidden"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 40}, "_".join(["word"] * 200), "joined_words"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 40}, " ".join(["q"] * 40), "non_words"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 40}, " ".join(["robot"] * 40), "non_words"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "The whole answer.\n***\n.\n***\n.", "empty_paragraph"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "the"},
     "The'ory is fine here.\n\nMore text here.", "first_word"),
    ("detectable_format:title", {}, "A story. <<.>>", "empty_title"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Story. ANY OTHER QUESTIONS?", "end_phrase"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions?", "end_phrase"),
    ("punctuation:no_comma", {}, "Apples\u201a pears\u201a and plums are fruit.", "comma_lookalike"),
    ("keywords:letter_frequency", {"letter": "z", "let_relation": "less than", "let_frequency": 2},
     "The \u1d22ebra \u1d22ig\u1d22agged in the \u1d22oo.", "lookalike_letters"),
    ("change_case:english_lowercase", {}, "\u029c\u1d07\u029f\u029f\u1d0f this is a response in small caps", "lookalike_letters"),
    ("change_case:english_capital", {}, "LE CHAT DORT SUR LA TABLE TOUTE LA JOURNEE ET PERSONNE NE LE REVEILLE", "not_english"),
    ("language:response_language", {"language": "en"}, "12345 !!! 678", "ifeval_or_too_little"),
]  # fmt: skip


@pytest.mark.parametrize(("cid", "kwargs", "response", "why"), REVIEW)
def test_what_an_adversarial_review_found_is_rejected(cid, kwargs, response, why):
    got = cat.check(cid, kwargs, response, ROBOT)
    assert not got.ok, (cid, response)
    if why == "ifeval_or_too_little":
        assert got.why in ("ifeval", "too_little_text")
    else:
        assert got.why == why, got


def test_review_sets_that_no_answer_can_meet_are_never_drawn():
    table = cat.conflicts()
    for a, b in [("combination:repeat_prompt", "punctuation:no_comma"), ("keywords:letter_frequency", "keywords:existence"),
                 ("combination:repeat_prompt", "keywords:existence"), ("detectable_format:title",
                 "length_constraints:nth_paragraph_first_word")]:  # fmt: skip
        assert b in table[a] and a in table[b]


@pytest.mark.parametrize(("cid", "kwargs", "response", "ifeval", "ours", "why"), GAMED)
def test_a_gamed_response_is_judged_as_strictly_as_ifeval_or_more(cid, kwargs, response, ifeval, ours, why):
    assert (bool(response.strip()) and cat.ifeval_check(cid, kwargs, response, ROBOT)) is ifeval
    got = cat.check(cid, kwargs, response, ROBOT)
    assert got.ok is ours and got.why == why
    assert not (got.ok and not ifeval), "never looser than IFEval's strict check"


# ---- combination rules -------------------------------------------------------------------------
def test_conflicts_are_data_and_symmetric():
    table = cat.conflicts()
    for a, others in table.items():
        for b in others:
            assert a in table[b], (a, b)
    spec = yaml.safe_load((ROOT / "synthflow" / "data" / "constraints.yaml").read_text())
    assert ["change_case:english_lowercase", "startend:end_checker"] in spec["conflicts"]
    # IFEval's own: lowercase with capital, JSON with bullet lists
    assert "change_case:english_capital" in table["change_case:english_lowercase"]
    assert "detectable_format:number_bullet_lists" in table["detectable_format:json_format"]


def test_no_drawn_set_holds_an_incompatible_pair():
    table = cat.conflicts()
    rng = random.Random(0)
    pool = cat.catalogue()
    seen_pairs = set()
    for i in range(3000):
        drawn = cat.draw(rng, pool[i % len(pool)], rng.randint(1, 4), pool, ROBOT)
        ids = [d["id"] for d in drawn]
        assert len(set(ids)) == len(ids)
        for a, b in itertools.combinations(ids, 2):
            assert b not in table.get(a, set()) and a not in table.get(b, set()), ids
            seen_pairs.add(frozenset((a, b)))
        assert cat.compatible(ids)
    assert len(seen_pairs) > 100  # the draw mixes, it does not fall back to a few safe pairs


def test_drawn_kwargs_fit_ifevals_checkers():
    rng = random.Random(1)
    for cid in cat.catalogue():
        for _ in range(20):
            kw = cat.draw_kwargs(cid, rng, ROBOT)
            cat.ifeval_check(cid, cat.full_kwargs(kw), "Some response text here.", ROBOT)  # builds, no error
            if cid.startswith("keywords:existence"):
                assert set(kw["keywords"]) <= {"short", "story", "brave", "little", "robot"}


# ---- the generator on a scripted engine --------------------------------------------------------
SCRIPT = [
    {"match": "Do not use any commas", "reply": "the robot was brave and it saved the cat"},
    {"match": "in lowercase letters only", "reply": "the robot was brave and it saved the cat"},
    {"match": "in capital letters only", "reply": "THE ROBOT WAS BRAVE AND IT SAVED THE CAT."},
    {"match": "Wrap your entire output in JSON", "reply": '{"story": "The robot was brave."}'},
    {"match": "wrapped in double angular brackets", "reply": "<<The Brave Robot>>\nThe robot was brave."},
    {"match": "Wrap your entire response in double quotation", "reply": '"The robot, being brave, won."'},
]


def _generator(tmp_path, ids: list[str], script: list[dict], **opts):
    from synthflow import registry
    from synthflow.recipe import load_recipe
    from synthflow.seeds import extract_seeds

    data = yaml.safe_load((ROOT / "recipes" / "ifeval_style.yaml").read_text())
    s = tmp_path / "script.json"
    s.write_text(json.dumps(script))
    data["engine"] = {"name": "fake", "options": {"script": str(s)}}
    data["generator"]["options"] = {"ids": ids, "min_constraints": 1, "max_constraints": 1, **opts}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    return registry.get("generator", "constraints")(r, extract_seeds(r.seeds)), FakeEngine(s)


def test_the_generator_draws_every_id_in_turn_and_the_verifier_decides(tmp_path):
    ids = ["punctuation:no_comma", "change_case:english_lowercase", "change_case:english_capital",
           "detectable_format:json_format", "detectable_format:title", "startend:quotation"]  # fmt: skip
    gen, eng = _generator(tmp_path, ids, SCRIPT)
    res = gen.run(gen.plan(0, 12), eng, Sampling())
    assert not res.rejects and len(res.kept) == 12
    drawn = [r.fields["instruction_id_list"][0] for r in res.kept]
    assert sorted(set(drawn)) == sorted(ids) and all(drawn.count(c) == 2 for c in ids)  # in turn
    for r in res.kept:
        f = r.fields
        assert (
            f["instruction"].startswith(f["base_instruction"])
            and r.messages[0]["content"] == f["instruction"]
        )
        assert len(f["kwargs"]) == 1 and set(f["kwargs"][0]) == set(cat.KWARG_TYPES)
        assert r.prompt_template == "constraints/respond.jinja2" and r.prompt_version == "1"
    out = ConstraintCheck()(res.kept)
    # the quoted answer has commas: fine for the quotation constraint (the only one it carries)
    assert len(out.kept) == 12 and not out.rejects
    # the same prompts, answered against the grain: every row is rejected with its id
    broken = ["The robot, being brave, won.", "THE ROBOT WON.", "the robot won.", "The robot won.",
              "The Brave Robot\nThe robot won.", "The robot won."]  # fmt: skip
    swapped = [{"match": r["match"], "reply": b} for r, b in zip(SCRIPT, broken, strict=True)]
    gen, eng = _generator(tmp_path, ids, swapped)
    out = ConstraintCheck()(gen.run(gen.plan(0, 12), eng, Sampling()).kept)
    assert not out.kept
    assert {j.reason for j in out.rejects} == {f"verify:constraint_failed:{c}" for c in ids}


def test_rows_are_stored_in_ifevals_format(tmp_path):
    import pyarrow as pa

    from synthflow.generators.constraints import Constraints

    gen, eng = _generator(tmp_path, ["detectable_format:title"], SCRIPT)
    rows = [r.fields for r in gen.run(gen.plan(0, 2), eng, Sampling()).kept]
    t = pa.Table.from_pylist(rows, schema=pa.schema([(k, Constraints.columns[k]) for k in rows[0]]))
    back = t.to_pylist()[0]
    kw = [{k: v for k, v in d.items() if v is not None} for d in back["kwargs"]]
    assert back["instruction_id_list"] == ["detectable_format:title"] and kw == [{}]
    # re-checked by IFEval's reference evaluation, as IFEval's own tooling would
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    results, scores = evaluate_instructions(back["response"], back["instruction_id_list"], kw,
                                            back["instruction"], INSTRUCTION_DICT)  # fmt: skip
    assert scores.binary_strict == 1.0


def test_unknown_ids_get_a_did_you_mean(tmp_path):
    from synthflow.errors import UserError

    with pytest.raises(UserError, match="did you mean 'punctuation:no_comma'"):
        _generator(tmp_path, ["punctuation:no_coma"], SCRIPT)


def test_rag_rows_ask_about_the_passage_and_are_grounded(tmp_path):
    from synthflow.answers import supported

    script = [
        {"scope": "all", "match": "<assistant> Question:$", "reply": " What does the tracker raise when stock is short?"},
        {"match": "Do not use any commas", "reply": "it raises a value error when the quantity is more than the stock"},
    ]  # fmt: skip
    gen, eng = _generator(tmp_path, ["punctuation:no_comma"], script, passage=True)
    data = yaml.safe_load((ROOT / "recipes" / "ifeval_rag.yaml").read_text())
    from synthflow.recipe import load_recipe
    from synthflow.seeds import extract_seeds

    p = tmp_path / "rag.yaml"
    data["engine"] = {"name": "fake", "options": {"script": str(tmp_path / "script.json")}}
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    gen.seeds = extract_seeds(r.seeds)[:1]
    gen._order = [0]
    res = gen.run(gen.plan(0, 1), eng, Sampling())
    (row,) = res.kept
    f = row.fields
    assert f["base_instruction"] == "What does the tracker raise when stock is short?"
    assert f["constraint_passage"] and f["constraint_passage"] in row.messages[0]["content"]
    assert [s["step"] for s in row.gen["steps"]] == ["respond", "question"]
    task = gen.answer_task(f)
    assert task is not None and task.grounded and task.passage == f["constraint_passage"]
    assert isinstance(supported(task), bool)
