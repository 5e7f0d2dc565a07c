"""Self-Instruct: the seed reader on the original file and the bootstrap rounds on a scripted engine."""

from __future__ import annotations

from synthflow.engines.base import Sampling
from synthflow.seeds import self_instruct_seeds

from .conftest import SEED_TASKS
from .helpers import make_generator as make


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
