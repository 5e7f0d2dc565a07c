"""Instruct-SkillMix: skill extraction, mixing, the skills file and example rotation on a scripted engine."""

from __future__ import annotations

import json

from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine

from .helpers import make_generator as make


# ---- Instruct-SkillMix --------------------------------------------------------------------------
def test_skillmix_extraction_and_mixing(tmp_path):
    from synthflow.generators.skillmix import normalize_skill, parse_skill_lists

    assert normalize_skill("2. Persuasive Writing: essays") == "persuasive writing"
    assert normalize_skill("1. 1.2. Humor") == "humor" and normalize_skill("42") == ""
    assert parse_skill_lists(" debating, humor\nQuery types: how-to request") == (
        ["debating", "humor"],
        ["how-to request"],
    )

    gen, eng = make(tmp_path, "skillmix", "fake_skillmix.json", k=2)
    gen.prepare(eng, Sampling())
    names = [s["name"] for s in gen.skills]
    assert set(names) == {
        "step-by-step reasoning",
        "budgeting",
        "persuasive writing",
        "summarization",
        "humor",
    }
    assert all(s["count"] == 8 for s in gen.skills)  # merged over the 8 shipped domains
    assert {q["name"] for q in gen.query_types} == {"comparison question", "how-to request"}
    art = gen.artifacts()["skills.json"]
    assert art["version"] == 1 and art["source"] == "domains" and len(art["extracted_from"]) == 8

    items = gen.plan(0, 6)
    res = gen.generate(items, eng, Sampling())
    assert [gen.mix(it) for it in items] == [gen.mix(it) for it in gen.plan(0, 6)], "mixing is seeded"
    for r in res.kept:
        assert len(r.fields["skills"]) == 2 and r.fields["query_type"] in (
            "comparison question",
            "how-to request",
        )
        assert r.fields["mix_seed"].endswith(f":mix:{r.item}")
        assert r.fields["instruction"] == "How can I plan a week of cheap vegetarian dinners for two people?"
    assert len(res.kept) == 6

    from filters.quality import Shirker

    bad = res.kept[0]
    bad.messages = [
        bad.messages[0],
        {
            "role": "assistant",
            "content": "I'm sorry, but I cannot help with that request. Planning meals depends on many things that only you know, "
            "such as your budget, your tastes and your kitchen, so please work it out yourself.",
        },
    ]
    short = res.kept[1]
    short.messages = [short.messages[0], {"role": "assistant", "content": "Eat lentils."}]
    out = Shirker()(res.kept)
    assert sorted(j.reason for j in out.rejects) == ["shirker:evasive", "shirker:short"]
    cov = gen.summary(out.kept)
    assert cov["coverage"]["skills"] and sum(cov["coverage"]["pairs"].values()) == len(out.kept)


def test_skillmix_reuses_a_skills_file_and_structured_outputs(tmp_path):
    f = tmp_path / "skills.json"
    f.write_text(
        json.dumps({"skills": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "query_types": [{"name": "q"}]})
    )
    gen, _ = make(tmp_path, "skillmix", "fake_skillmix.json", skills_file=str(f))
    eng = FakeEngine(
        [
            {
                "match": "Query type",
                "reply": '{"instruction": "Compare tea and coffee for a morning routine."}',
            },
            {"match": ".", "reply": "Tea has less caffeine; coffee is stronger."},
        ]
    )
    gen.prepare(eng, Sampling())
    assert eng.calls == 0 and gen.source == f"file:{f}"
    gen.structured = True
    res = gen.generate(gen.plan(0, 2), eng, Sampling())
    assert [r.fields["instruction"] for r in res.kept] == [
        "Compare tea and coffee for a morning routine."
    ] * 2
    req = gen.request(
        "instruction", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Instruction:"}], 0
    )
    assert req.json_schema and req.messages[-1]["role"] == "user", "structured output drops the text prefill"


def test_skillmix_skill_names_keep_digits_and_symbols():
    from synthflow.generators.skillmix import normalize_skill

    assert normalize_skill("C++ programming") == "c++ programming"
    assert normalize_skill("3. 3D modeling: meshes") == "3d modeling"
    assert normalize_skill("C#") == "c#" and normalize_skill("Node.js development") == "node.js development"
    assert normalize_skill("42") == "" and normalize_skill("a") == ""


def test_skillmix_merges_synonyms_and_keeps_the_long_tail():
    """Spellings of one skill are one skill (counted once per list); half the kept skills are the
    most frequent, the rest come from the long tail, not from the next most frequent names."""
    from synthflow.generators.skillmix import merge_counts, skill_key

    assert skill_key("Problem-solving") == skill_key("solving problems")
    assert skill_key("creative writing") != skill_key("technical writing")
    generic = ["problem solving", "critical thinking", "communication"]
    lists = [generic + [f"rare skill {i}"] for i in range(30)]
    lists += [
        ["Problem-Solving", "solving problems", "critical thinking"]
    ] * 5  # synonyms, and twice in one list
    lists += [[f"mid skill {i}"] * 1 for i in range(10)] * 2  # count 2: more frequent than the rare ones
    got = merge_counts(lists, 10, "0:skills")
    names = [d["name"] for d in got]
    assert names[:3] == ["problem solving", "critical thinking", "communication"]
    assert got[0]["count"] == 35  # 30 + 5 lists, each counted once
    assert len(got) == 10 and len(set(names)) == 10
    rest = names[5:]  # the tail half: drawn from every name not in the head, rare ones included
    assert any(n.startswith("rare skill") for n in rest)


def test_skillmix_top_skills_are_not_alphabetical():
    """Most extracted skills have count 1: the cut among ties is a seeded shuffle. (It used to keep
    the first names in alphabetical order: every kept skill began with a-m.)"""
    from synthflow.generators.skillmix import merge_counts

    letters = "abcdefghijklmnopqrstuvwxyz"
    lists = [[f"{c} skill" for c in letters], ["z skill", "y skill"]]
    top = [s["name"] for s in merge_counts(lists, 8, "0:skills")]
    assert top[:2] in (["z skill", "y skill"], ["y skill", "z skill"])  # by count first
    rest = top[2:]
    assert any(name[0] > "m" for name in rest) and rest != sorted(rest)
    assert top == [s["name"] for s in merge_counts(lists, 8, "0:skills")]  # seeded
    assert top != [s["name"] for s in merge_counts(lists, 8, "1:skills")]


def test_skillmix_rotates_example_pairs(tmp_path):
    gen, _ = make(tmp_path, "skillmix", "fake_skillmix.json")
    sets = {tuple(e["id"] for e in gen.examples_for(i)) for i in range(8)}
    assert len(sets) == 4 and all(len(s) == 2 for s in sets)  # 4 fixed sets of 2, rotating
    assert gen.examples_for(1) == gen.examples_for(5)  # a set recurs: prompts share a prefix
    assert len({e for s in sets for e in s}) > 2  # not the same 2 examples every time
