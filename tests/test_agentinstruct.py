"""AgentInstruct: its three flows, unanswerable and truncated rows, and the editor's parse."""

from __future__ import annotations

import json

from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine

from .conftest import DATA
from .helpers import make_generator as make


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
