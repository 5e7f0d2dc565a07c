"""TemplateGSM-style templates: sampling under constraints, verification and stable splits."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import DATA, ROOT
from .helpers import make_generator as make


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
    assert {j.reason for j in res.rejects} == {
        "parse:variables_mismatch",
        "parse:constraints_unsatisfiable",
        "parse:unused_variable:pens",  # a number the answer ignores
    }
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
    # `return 7` ignores its variable: rejected when parsed (unused_variable:pens), before verify
    assert "A box" not in by_problem
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
    every run splits the same way (it came from the random run id and the test split was chance).
    Row ids are the run's: two runs that draw the same items (e.g. two fingerprints, both from item
    0) do not share row ids, so the cross-run dedup does not take one's row for the other resumed."""
    ids, rows = [], []
    for run_id in ("20261124T000000-aaaaaa", "20261125T000000-bbbbbb"):
        gen, eng = make(tmp_path, "math_templates", "fake_templates.json", test_fraction=0.5)
        gen.run_id = run_id
        res = gen.run(gen.plan(0, 40), eng, Sampling())
        ids.append(sorted({(r.fields["template_id"], r.fields["split"]) for r in res.kept}))
        rows.append({r.id for r in res.kept})
    assert ids[0] == ids[1]
    assert {s for _, s in ids[0]} == {"train", "test"}
    assert rows[0] and not rows[0] & rows[1]


# ---- anchored to seed problems with known answers (InfinityMATH) ---------------------------------
def _anchored(tmp_path):
    data = yaml.safe_load((ROOT / "recipes" / "math_templates.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / "fake_templates_anchored.json")}}
    data["seeds"] = [{"source": "gsm8k", "limit": 5}]
    data["generator"]["options"].update(anchor=True, variants_per_template=6)
    p = tmp_path / "anchored.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    gen = registry.get("generator", "math_templates")(r, extract_seeds(r.seeds))
    return gen, FakeEngine(DATA / "fake_templates_anchored.json")


def test_an_anchored_template_must_be_its_seed_and_reproduce_its_answer(tmp_path):
    from filters.verify import Verify

    gen, eng = _anchored(tmp_path)
    items = [it for it in gen.plan(0, 5)]
    res = gen.run(items, eng, Sampling())
    by_seed = {j.record.seed_id: j.reason for j in res.rejects}
    assert by_seed["gsm8k-train-4"] == "parse:unused_variable:friends"  # a number the answer ignores
    assert by_seed["gsm8k-train-2"] == "parse:seed_values_mismatch"  # 'twice' became a made-up variable
    assert by_seed["gsm8k-train-3"] == "parse:seed_values_mismatch"  # not the seed's numbers at all
    v = Verify({"kind": "template"})
    try:
        out = v(res.kept)
    finally:
        v.close()
    rejected = {j.record.seed_id: j.reason for j in out.rejects}
    # Weng's template returns rate * minutes (600), not the known answer 10: every variant goes
    assert rejected == {"gsm8k-train-1": "verify:seed_answer_mismatch"}
    kept = [r for r in out.kept if r.seed_id == "gsm8k-train-0"]
    assert len(kept) == 6
    names = {json.loads(r.fields["wording"])["name"] for r in kept}
    assert len(names) == 6 and "Natalia" not in names  # names vary with the numbers
    for r in kept:
        a = json.loads(r.fields["assignment"])
        assert r.fields["answer"] == str(a["april"] + a["april"] // 2)
        assert r.fields["seed_answer"] == "72" and json.loads(r.fields["seed_values"]) == {"april": 48}
        who = json.loads(r.fields["wording"])["name"]
        assert r.fields["problem"].startswith(f"{who} sold clips to {a['april']} ")
        r.messages = gen.messages(r.fields)
        assert r.messages[1]["content"].endswith(f"The answer is {r.fields['answer']}.")


def test_anchored_templates_need_seeds_with_answers(tmp_path):
    from synthflow.errors import UserError

    data = yaml.safe_load((ROOT / "recipes" / "math_templates.yaml").read_text())
    data["seeds"] = [{"source": "jsonl", "path": "builtin:self_instruct_seeds.jsonl"}]
    data["generator"]["options"]["anchor"] = True
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    with pytest.raises(UserError, match="no problem and answer"):
        registry.get("generator", "math_templates")(r, extract_seeds(r.seeds))


def test_shipped_anchored_examples_reproduce_their_seeds():
    """The few-shot examples of the anchored prompt pass the checks they teach."""
    from synthflow.generators.math_templates import fill, satisfies
    from synthflow.mathcheck import equivalent
    from synthflow.seeds import jsonl_seeds

    for s in jsonl_seeds("builtin:math_templates_anchored.jsonl"):
        d = s.data
        scope: dict = {}
        exec(compile(d["program"], "<example>", "exec"), scope)  # our own shipped example
        nums = {k: v for k, v in d["seed_values"].items() if not isinstance(v, str)}
        assert equivalent(d["answer"], scope["solution"](**nums)), d["id"]
        assert fill(d["template"], d["seed_values"]) == d["problem"], d["id"]
        assert satisfies(d["constraints"], nums), d["id"]
