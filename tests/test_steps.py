"""Per-step sampling and truncation: each generator step has its own sampling (overridable in the
recipe), every step's finish reason is recorded, and a row one of whose steps was cut at max_tokens
is rejected unless the generator dropped the cut part itself."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.errors import UserError
from synthflow.generators.base import finish_reason
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import DATA, ROOT


def make(tmp_path, recipe: str, **changes):
    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / "fake_math.json")}}
    data["generator"].update(changes)
    p = tmp_path / f"{recipe}.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    return registry.get("generator", r.generator.name)(r, extract_seeds(r.seeds))


def test_self_instruct_steps_have_their_own_sampling(tmp_path):
    gen = make(tmp_path, "self_instruct", sampling={"classify": {"max_tokens": 4}})
    eng = FakeEngine(DATA / "fake_self_instruct.json")
    base = Sampling(temperature=0.8, max_tokens=200)
    gen.run(gen.plan(0, 2), eng, base)
    by_call = [(s.temperature, s.max_tokens) for s in eng.samplings]
    # instructions (the recipe's), classify (greedy; the recipe cut it to 4), output-first, input-first
    assert by_call == [(0.8, 200), (0.0, 4), (0.0, 300), (0.0, 300)]


def test_unknown_step_in_recipe_is_one_line(tmp_path):
    with pytest.raises(
        UserError, match=r"field generator\.sampling\.clasify: unknown step; did you mean 'classify'"
    ):
        make(tmp_path, "self_instruct", sampling={"clasify": {"max_tokens": 4}})


def test_a_cut_response_rejects_the_row(tmp_path):
    script = json.loads((DATA / "fake_skillmix.json").read_text())
    for r in script:
        if "cheap vegetarian dinners" in r["match"]:
            r["finish_reason"] = "length"
    gen = make(tmp_path, "skillmix")
    eng = FakeEngine(script)
    gen.prepare(eng, Sampling())
    res = gen.run(gen.plan(0, 4), eng, Sampling())
    assert not res.kept and {j.reason for j in res.rejects} >= {"parse:truncated:respond"}
    cut = next(j.record for j in res.rejects if j.reason == "parse:truncated:respond")
    assert [s["step"] for s in cut.gen["steps"]] == ["instruction", "respond"]
    assert cut.gen["steps"][1]["finish_reason"] == "length" and cut.gen["steps"][1]["max_tokens"] == 512
    assert finish_reason(cut.gen) == "length"


def test_self_instruct_drops_the_cut_tail(tmp_path):
    """The original discards the last instruction (and here the last instance) of a cut list."""
    script = copy.deepcopy(json.loads((DATA / "fake_self_instruct.json").read_text()))
    for r in script:
        if r["match"] in ("example tasks", "<assistant> Input:$"):
            r["finish_reason"] = "length"
        if r["match"] == "<assistant> Input:$":  # 3 pairs, the third cut off mid-answer
            r["reply"] = (
                " \nOutput: A cheerful answer number one.\nInput: second input\nOutput: The second answer.\nInput: third\nOutput: The thi"
            )
    gen = make(tmp_path, "self_instruct")
    res = gen.run(gen.plan(0, 2), FakeEngine(script), Sampling())
    instructions = {r.fields["instruction"] for r in res.kept}
    # 'Classify the animal ...' was the last line of the cut list: dropped
    assert instructions == {
        "Write a limerick about a cat who loves the rain.",
        "Explain why the sky is blue to a young child.",
    }
    other = [r for r in res.kept if not r.fields["si_is_classification"]]
    assert {r.fields["output"] for r in other} == {"A cheerful answer number one.", "The second answer."}
    for r in res.kept:
        steps = {s["step"]: s["finish_reason"] for s in r.gen["steps"]}
        assert steps["instructions"] == "length:handled" and finish_reason(r.gen) != "length"


def test_self_instruct_classification_examples_are_balanced(tmp_path):
    """The 6 fixed classification examples used to be all 'No' at seed 0."""
    for seed in range(5):
        data = yaml.safe_load((ROOT / "recipes" / "self_instruct.yaml").read_text())
        data["seed"] = seed
        p = tmp_path / "si.yaml"
        p.write_text(yaml.safe_dump(data))
        r = load_recipe(p)
        gen = registry.get("generator", "self_instruct")(r, extract_seeds(r.seeds))
        labels = [ex["is_classification"] for ex in gen._classify_examples(6)]
        assert labels.count(True) == labels.count(False) == 3, (seed, labels)


def test_self_instruct_instance_filters():
    from synthflow.generators.self_instruct import instance_filters

    kept, dropped = instance_filters(
        [
            {"input": "a", "output": "x"},
            {"input": "same", "output": "same"},
            {"input": "b", "output": "Answer:"},
            {"input": "", "output": ""},
            {"input": "a", "output": "x"},
        ]
    )
    assert kept == [{"input": "a", "output": "x"}]
    assert dropped == [
        (1, "instance_input_equals_output"),
        (2, "instance_ends_with_colon"),
        (3, "instance_empty_output"),
        (4, "instance_repeated"),
    ]
    # the same input with two different outputs: the task's instances are unreliable, all go
    kept, dropped = instance_filters([{"input": "q", "output": "yes"}, {"input": "q", "output": "no"}])
    assert not kept and [d[1] for d in dropped] == ["instance_conflict"] * 2


def test_shipped_recipes_reject_cut_rows():
    """Every shipped recipe that thresholds on `finished` requires it (self_instruct had 0)."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        for f in yaml.safe_load(path.read_text())["filters"]:
            if f["name"] == "thresholds" and "finished" in f.get("min", {}):
                assert f["min"]["finished"] == 1, path.name
