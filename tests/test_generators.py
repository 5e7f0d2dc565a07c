"""Every generation method: golden prompts, parsers, and its full loop on a scripted engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds, self_instruct_seeds

from .conftest import DATA, ROOT, SHARED, assert_golden


def make(tmp_path: Path, recipe: str, script: str, **options):
    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    data["engine"] = {"name": "fake", "script": str(DATA / script)}
    data["generator"].setdefault("options", {}).update(options)
    p = tmp_path / f"{recipe}.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    gen = registry.get("generator", r.generator.name)(r, extract_seeds(r.seeds))
    return gen, FakeEngine(DATA / script)


@pytest.mark.parametrize("name", registry.names("generator"))
def test_golden_prompts(name):
    recipe = next(
        p
        for p in (ROOT / "recipes").glob("*.yaml")
        if yaml.safe_load(p.read_text())["generator"]["name"] == name
    )
    r = load_recipe(recipe)
    gen = registry.get("generator", name)(r, extract_seeds(r.seeds))
    rendered = gen.render_examples()
    text = "\n\n=====\n\n".join(
        "\n".join(f"<<{m['role']}>>\n{m['content']}" for m in msgs) for msgs in rendered
    )
    versions = "\n".join(f"{role}: {t.label}" for role, t in sorted(gen.templates.items()))
    assert_golden(f"prompts_{name}.txt", versions + "\n\n" + text)


# ---- seeds --------------------------------------------------------------------------------------
def test_self_instruct_reader_on_the_original_seed_file():
    seeds = self_instruct_seeds(str(SHARED / "self_instruct_seed_tasks.jsonl"))
    assert len(seeds) == 175
    assert seeds[0].seed_id == "seed_task_0" and seeds[0].data["instances"][0]["output"]
    assert sum(s.data["is_classification"] for s in seeds) > 10
    ours = self_instruct_seeds("builtin:self_instruct_seeds.jsonl")
    assert len(ours) == 40 and all(s.data["instances"] for s in ours)


# ---- Self-Instruct ------------------------------------------------------------------------------
def test_self_instruct_bootstrap_rounds(tmp_path):
    from synthflow.generators.self_instruct import instruction_problem, parse_instances, parse_instructions

    assert parse_instructions(" A.\n10. B c\n11) C\nprose") == ["A.", "B c", "C"]
    assert instruction_problem("Draw a picture of a dog.", 4, 150).startswith("keyword:")
    assert instruction_problem("Hi there", 4, 150) == "too_short"
    assert instruction_problem("- List four fruits please", 4, 150) == "punctuation_start"
    assert instruction_problem("Écris un poème sur la mer", 4, 150) == "non_ascii_start"
    assert parse_instances(" x\nOutput: y\nInput: \nOutput: z", False) == [
        {"input": "x", "output": "y"},
        {"input": "", "output": "z"},
    ]
    assert parse_instances(" pos\nInput: great", True) == [{"input": "great", "output": "pos"}]

    gen, eng = make(tmp_path, "self_instruct", "fake_self_instruct.json")
    rounds = [gen.generate(gen.plan(i * 2, 2), eng, Sampling()) for i in range(3)]
    assert (
        eng.calls == 3 + 2 * 1
    )  # round 1: 3 calls; rounds 2-3: instructions only (all new ones too similar)
    first = rounds[0]
    reasons = sorted({j.reason for j in first.rejects})
    assert "filter:keyword:picture" in reasons or "filter:keyword:draw" in reasons
    assert "filter:too_short" in reasons and "filter:rouge_l>0.7" in reasons
    kept = first.kept
    instructions = {r.fields["instruction"] for r in kept}
    assert instructions == {
        "Write a limerick about a cat who loves the rain.",
        "Explain why the sky is blue to a young child.",
        "Classify the animal as a mammal, bird or fish.",
    }
    clf = [r for r in kept if r.fields["si_is_classification"]]
    assert {r.fields["output"] for r in clf} == {
        "mammal",
        "bird",
    }  # output-first, incomplete last pair dropped
    other = [r for r in kept if not r.fields["si_is_classification"]]
    assert max(r.fields["si_instance"] for r in other) == 4, "at most 5 instances per instruction"
    r = kept[0]
    assert r.fields["si_round"] == 1 and len(r.fields["si_in_context"]) == 8
    assert all(i.startswith("sf_seed_task_") for i in r.fields["si_in_context"])
    assert r.fields["si_nearest"] and 0 <= r.fields["si_rouge_l"] <= 0.7
    # later rounds: 2 of the 8 in-context instructions are machine-generated ones
    later = rounds[1].rejects[0].record.fields
    assert later["si_round"] == 2
    assert sum(not i.startswith("sf_seed_task_") for i in later["si_in_context"]) == 2
    assert all(j.reason.startswith("filter:") for j in rounds[1].rejects)


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
    assert names == sorted(names) and set(names) == {
        "step-by-step reasoning",
        "budgeting",
        "persuasive writing",
        "summarization",
        "humor",
    }
    assert all(s["count"] == 8 for s in gen.skills)  # merged over the 8 shipped domains
    assert [q["name"] for q in gen.query_types] == ["comparison question", "how-to request"]
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


# ---- AgentInstruct ------------------------------------------------------------------------------
def test_agentinstruct_three_flows(tmp_path):
    gen, eng = make(tmp_path, "agentinstruct", "fake_agentinstruct.json", refinement_rounds=2)
    items = gen.plan(0, 4)
    res = gen.generate(items, eng, Sampling())
    assert eng.calls == 1 + 1 + 2 * 2 + 1  # transform, instruction, (suggest, edit) x 2, respond
    assert len(res.kept) == 4
    r = res.kept[0]
    f = r.fields
    assert (
        f["ai_skill"] in gen.opts.taxonomy
        and f["ai_transformation"] in gen.opts.taxonomy[f["ai_skill"]].transformations
    )
    assert f["ai_seed_text"] and f["ai_transformed_text"].startswith("ANNA:")
    assert f["ai_seed_instruction"] == "What does Ben say happens to water vapour without clouds and rain?"
    assert len(f["ai_suggestions"]) == 2 and f["ai_suggestions"][0] == [
        "Ask for a quote from the text.",
        "Require an answer in one sentence.",
    ]
    assert len(f["ai_instruction_versions"]) == 3 and f["instruction"].startswith("In one sentence")
    assert (
        r.messages[0]["content"].endswith(f["instruction"])
        and f["ai_transformed_text"] in r.messages[0]["content"]
    )
    assert r.gen["completion_tokens"] > 0
    code_items = [it for it in gen.plan(0, 40) if it.seed.data.get("doc_kind") == "code"]
    assert code_items and all(gen.choose(it)[0] == "coding" for it in code_items)


# ---- TemplateGSM --------------------------------------------------------------------------------
def test_math_templates_sampling_and_verification(tmp_path):
    from filters.verify import Verify
    from synthflow.generators.math_templates import parse_template

    with pytest.raises(Exception, match="variables_mismatch"):
        parse_template(
            " {x} and {y}\nVariables:\nx: int 1-2\nProgram:\n```python\ndef solution(x, y):\n    return x\n```"
        )

    gen, eng = make(
        tmp_path, "math_templates", "fake_templates.json", variants_per_template=5, test_fraction=0.5
    )
    res = gen.generate(gen.plan(0, 40), eng, Sampling())
    assert {j.reason for j in res.rejects} == {"parse:variables_mismatch"}
    by_t: dict[str, list] = {}
    for r in res.kept:
        by_t.setdefault(r.fields["template_id"], []).append(r)
    assert all(len(v) == 5 for v in by_t.values())
    v = Verify({"kind": "template"})
    try:
        out = v(res.kept)
    finally:
        v.close()
    reasons = {j.reason for j in out.rejects}
    assert "verify:template_failed:error:ZeroDivisionError" in reasons  # b can be 0: the whole template goes
    assert "verify:degenerate:negative" in reasons and "verify:degenerate:constant" in reasons
    kept_t = {r.fields["template_id"] for r in out.kept}
    assert kept_t and not kept_t & {j.record.fields["template_id"] for j in out.rejects}
    for r in out.kept:
        a = json.loads(r.fields["assignment"])
        assert int(r.fields["answer"]) == a["rows"] * a["per_row"]  # correct by construction
        assert str(a["rows"]) in r.fields["problem"]
        gen.refresh(r)
        assert r.messages[1]["content"].endswith(f"The answer is {r.fields['answer']}.")
    # the split is decided per template
    split_of = {}
    for r in res.kept:
        assert split_of.setdefault(r.fields["template_id"], r.fields["split"]) == r.fields["split"]
