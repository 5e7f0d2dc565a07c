"""Every generation method: golden prompts, parsers, and its full loop on a scripted engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds, self_instruct_seeds

from .conftest import DATA, ROOT, SEED_TASKS, assert_golden


def make(tmp_path: Path, recipe: str, script: str, **options):
    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / script)}}
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
        for p in sorted((ROOT / "recipes").glob("*.yaml"))
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
    seeds = self_instruct_seeds(str(SEED_TASKS))
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
    # an empty input stays empty (it used to swallow the next pair: input='Output: A\nInput:', output='B')
    assert parse_instances("\nOutput: A\nInput:\nOutput: B", False) == [
        {"input": "", "output": "A"},
        {"input": "", "output": "B"},
    ]

    gen, eng = make(tmp_path, "self_instruct", "fake_self_instruct.json")
    rounds = [gen.generate(gen.plan(i * 2, 2), eng, Sampling()) for i in range(3)]
    # round 1: instructions, classify, output-first and input-first instances (one call per step);
    # rounds 2-3: instructions only (all new ones too similar)
    assert eng.calls == 4 + 2 * 1
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
    assert {r.fields["output"] for r in clf} == {"mammal", "bird"}  # output-first
    assert "filter:instance_empty_input" in reasons  # the incomplete last pair ('fish', no input)
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


# ---- AgentInstruct ------------------------------------------------------------------------------
def test_agentinstruct_three_flows(tmp_path):
    gen, eng = make(tmp_path, "agentinstruct", "fake_agentinstruct.json", refinement_rounds=2)
    items = gen.plan(0, 4)
    res = gen.run(items, eng, Sampling())
    # transform, instruction, (suggest, edit) x 2, answerability check, respond: one call per step
    assert eng.calls == 1 + 1 + 2 * 2 + 1 + 1
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
    # round 1 kept the text, round 2 revised it (the harder task needs the added detail)
    assert f["ai_text_revised"] and f["ai_transformed_text"].endswith("the land would dry out within a year.")
    assert f["ai_answerable"] is True
    assert (
        r.messages[0]["content"].endswith(f["instruction"])
        and f["ai_transformed_text"] in r.messages[0]["content"]
    )
    assert r.gen["completion_tokens"] > 0
    code_items = [it for it in gen.plan(0, 40) if it.seed.data.get("doc_kind") == "code"]
    assert code_items and all(gen.choose(it)[0] == "coding" for it in code_items)


def test_agentinstruct_rejects_unanswerable_and_truncated(tmp_path):
    script = json.loads((DATA / "fake_agentinstruct.json").read_text())
    for r in script:
        if r["match"] == "<assistant> Answer:$":
            r["reply"] = [" No"]
        if r["match"] == "Rewrite the source as":
            r["reply"] = [r["reply"]]
    gen, _ = make(tmp_path, "agentinstruct", "fake_agentinstruct.json", refinement_rounds=1)
    res = gen.run(gen.plan(0, 2), FakeEngine(script), Sampling())
    assert not res.kept and {j.reason for j in res.rejects} == {"refine:unanswerable"}
    for r in script:
        if r["match"] == "Rewrite the source as":
            r["finish_reason"] = "length"  # a transformation cut at max_tokens
    res = gen.run(gen.plan(0, 2), FakeEngine(script), Sampling())
    assert not res.kept and {j.reason for j in res.rejects} == {"parse:truncated:transform"}


def test_agentinstruct_parse_edit():
    from synthflow.generators.agentinstruct import parse_edit

    assert parse_edit(" unchanged\nTask: Why is the sky blue?") == (None, "Why is the sky blue?")
    assert parse_edit(" A new text.\nMore of it.\nTask: Why?\n\nextra") == ("A new text. More of it.", "Why?")
    assert parse_edit(" Summarize it in two sentences.") == (None, "Summarize it in two sentences.")


# ---- TemplateGSM --------------------------------------------------------------------------------
def test_math_templates_sampling_and_verification(tmp_path):
    from filters.verify import Verify
    from synthflow.generators.math_templates import parse_template

    with pytest.raises(Exception, match="variables_mismatch"):
        parse_template(
            " {x} and {y}\nVariables:\nx: int 1-2\nProgram:\n```python\ndef solution(x, y):\n    return x\n```"
        )
    with pytest.raises(Exception, match="bad_constraint"):  # a constraint cannot run code
        parse_template(
            " {x}\nVariables:\nx: int 1-2\nConstraints:\n__import__('os').system('true')\n"
            "Program:\n```python\ndef solution(x):\n    return x\n```"
        )

    gen, eng = make(
        tmp_path, "math_templates", "fake_templates.json", variants_per_template=8, test_fraction=0.5
    )
    res = gen.run(gen.plan(0, 80), eng, Sampling())
    assert {j.reason for j in res.rejects} == {"parse:variables_mismatch", "parse:constraints_unsatisfiable"}
    v = Verify({"kind": "template"})
    try:
        out = v(res.kept)
    finally:
        v.close()
    by_problem: dict[str, set[str]] = {}
    for j in out.rejects:
        by_problem.setdefault(" ".join(j.record.fields["template"].split()[:2]), set()).add(j.reason)
    for r in out.kept:
        by_problem.setdefault(" ".join(r.fields["template"].split()[:2]), set()).add("ok")
    # b can be 0: those variants fail alone, the template keeps its other variants
    assert by_problem["Share {a}"] == {"verify:variant_failed:error:ZeroDivisionError", "ok"}
    assert "verify:non_integer_count" in by_problem["{a} pizzas"]  # a*b/4 slices: whole numbers only
    assert all(
        float(r.fields["answer"]).is_integer() for r in out.kept if r.fields["template"].startswith("{a}")
    )
    assert by_problem["A box"] == {"verify:degenerate:constant"}  # `return 7`
    assert (
        "verify:variant_negative" in by_problem["Tom had"]
        and "verify:solution_mismatch" in by_problem["Tom had"]
    )
    kept = {}
    for r in out.kept:
        kept.setdefault(r.fields["template"], []).append(r)
    farm = kept[
        "A farm has {rows} rows with {per_row} apple trees each. How many apple trees are on the farm?"
    ]
    for r in farm:
        a = json.loads(r.fields["assignment"])
        assert int(r.fields["answer"]) == a["rows"] * a["per_row"]  # correct by construction
        assert r.fields["solution"].endswith(f"= {a['rows'] * a['per_row']} apple trees.")
        r.messages = gen.messages(r.fields)
        assert r.messages[1]["content"].startswith(r.fields["solution"])
        assert r.messages[1]["content"].endswith(f"The answer is {r.fields['answer']}.")
    # the constraint b <= a held for every draw, so no variant of that template went negative
    left = kept["Tom had {a} dollars and spent {b} dollars. How many dollars are left?"]
    assert len(left) >= 8 and all(int(r.fields["answer"]) >= 0 for r in left)
    assert all(r.fields["constraints"] == ["b <= a"] for r in left)
    # the split is decided per template
    split_of = {}
    for r in res.kept:
        assert split_of.setdefault(r.fields["template_id"], r.fields["split"]) == r.fields["split"]


def test_shipped_template_examples_check_out():
    """Every shipped example template: constraints hold for its draws, and its worded solution ends on
    the number its program returns."""
    from synthflow.generators.math_templates import render_solution, sample_assignments
    from synthflow.mathcheck import equivalent
    from synthflow.seeds import jsonl_seeds

    for s in jsonl_seeds("builtin:math_templates.jsonl"):
        d = s.data
        scope: dict = {}
        exec(compile(d["program"], "<example>", "exec"), scope)  # our own shipped example, not model output
        draws = sample_assignments(d["variables"], 20, d["id"], d["constraints"])
        assert len(draws) == 20, d["id"]
        for a in draws:
            words = render_solution(d["solution"], a)
            last = re.findall(r"-?\d[\d,]*(?:\.\d+)?", words)[-1]
            assert equivalent(last, scope["solution"](**a)), (d["id"], a, words)


def test_template_ids_and_splits_do_not_depend_on_the_run(tmp_path):
    """The split of a template is decided by its id; the id comes from the item and the template, so
    every run splits the same way (it came from the random run id and the test split was chance)."""
    ids = []
    for run_id in ("20261124T000000-aaaaaa", "20261125T000000-bbbbbb"):
        gen, eng = make(tmp_path, "math_templates", "fake_templates.json", test_fraction=0.5)
        gen.run_id = run_id
        res = gen.run(gen.plan(0, 40), eng, Sampling())
        ids.append(sorted({(r.fields["template_id"], r.fields["split"]) for r in res.kept}))
    assert ids[0] == ids[1]
    assert {s for _, s in ids[0]} == {"train", "test"}
