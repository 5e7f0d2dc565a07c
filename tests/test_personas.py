"""Persona-driven synthesis: each item draws a persona, the prompt asks for what that
person would pose, the row keeps it, and the summary measures diversity."""

from __future__ import annotations

import json

import pytest
import yaml

from synthflow import registry
from synthflow.engines.base import Sampling
from synthflow.engines.fake import FakeEngine
from synthflow.errors import UserError
from synthflow.personas import distinct_n, load_personas, persona_for
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import DATA, ROOT, assert_golden, math_recipe
from .helpers import run_local


def _gen(path):
    r = load_recipe(path)
    return registry.get("generator", r.generator.name)(r, extract_seeds(r.seeds))


def test_shipped_personas():
    ps = load_personas("builtin:personas.jsonl")
    assert len(ps) >= 200 and len(set(ps)) == len(ps)
    rows = [json.loads(x) for x in (ROOT / "synthflow/data/personas.jsonl").read_text().splitlines()]
    assert all(set(r) == {"persona", "domain"} for r in rows)


def test_persona_draws_are_seeded_and_spread():
    ps = [f"person {i}" for i in range(50)]
    a = [persona_for(ps, 0, i) for i in range(200)]
    assert a == [persona_for(ps, 0, i) for i in range(200)]  # the same in every run
    assert a != [persona_for(ps, 1, i) for i in range(200)]  # another recipe seed, other draws
    assert len(set(a)) > 35


def test_math_rows_carry_the_persona_their_prompt_named(tmp_path):
    gen = _gen(math_recipe(tmp_path, generator__options__personas="builtin:personas.jsonl"))
    assert gen.templates["generate"].name == "math/pal_persona.jinja2"
    items = gen.plan(0, 12)
    eng = FakeEngine(DATA / "fake_math.json")
    res = gen.run(items, eng, Sampling())
    rows = res.kept + [j.record for j in res.rejects]
    assert len(rows) == 12
    for r in rows:
        p = r.fields["persona"]
        assert p == gen.persona(items[r.item]) and p in gen.personas
    for it in items:
        user = gen.templates["generate"].render(**gen.context(it))[-2]["content"]
        assert user.endswith(f"Person: {gen.persona(it)}\nWrite a short problem that this person would pose.")
    assert len({r.fields["persona"] for r in rows}) > 6


def test_without_personas_the_prompts_do_not_change(tmp_path):
    gen = _gen(math_recipe(tmp_path))
    assert gen.templates["generate"].name == "math/pal.jinja2" and gen.persona(gen.plan(0, 1)[0]) is None
    assert all("Person:" not in m["content"] for m in gen.render_examples()[0])


def test_golden_persona_prompts(tmp_path):
    text = []
    for recipe, extra in (("persona_math", {}), ("self_instruct", {"personas": "builtin:personas.jsonl"})):
        data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
        data["generator"].setdefault("options", {}).update(extra)
        p = tmp_path / f"{recipe}.yaml"
        p.write_text(yaml.safe_dump(data))
        gen = _gen(p)
        msgs = gen.render_examples()[0]
        text.append(f"{recipe}: {gen.templates[next(iter(gen.persona_prompts))].label}\n" +
                    "\n".join(f"<<{m['role']}>>\n{m['content']}" for m in msgs))  # fmt: skip
    assert_golden("prompts_personas.txt", "\n\n=====\n\n".join(text))


def test_a_bad_persona_file_is_one_line(tmp_path):
    for content, why in [(None, "not found"), ("", "is empty"), ('{"name": "x"}\n', "no 'persona' text")]:
        f = tmp_path / "p.jsonl"
        if content is None:
            f.unlink(missing_ok=True)
        else:
            f.write_text(content)
        with pytest.raises(UserError, match=why):
            _gen(math_recipe(tmp_path, generator__options__personas=str(f)))


def test_distinct_n():
    assert distinct_n(["a b a b"], 2) == round(2 / 3, 4)
    assert distinct_n(["a b", "a b"], 1) == 0.5 and distinct_n([""], 2) is None


def test_run_summary_reports_diversity_and_personas(tmp_path, monkeypatch):
    recipe = math_recipe(
        tmp_path, n=4, batch_size=16, max_items=32, generator__options__personas="builtin:personas.jsonl"
    )
    s = run_local(recipe, tmp_path / "out", tmp_path / "c.sqlite3", monkeypatch)
    d = s["diversity"]
    assert d["field"] == "problem" and d["parsed"]["rows"] > 0 and 0 < d["parsed"]["distinct_2"] <= 1
    assert d["accepted"]["rows"] == s["counts"]["accepted"] and d["distinct_personas"] >= 1
    import duckdb

    q = f"SELECT count(*) FROM read_parquet('{s['path']}/data/*.parquet') WHERE persona IS NOT NULL"
    assert duckdb.sql(q).fetchall()[0][0] == s["counts"]["accepted"] > 0
