"""Contract tests over every registered component: prompts render, filters give reasons,
generators declare the columns they fill, verifiers and scorers run."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synthflow import registry
from synthflow.filtering import Filter, FilterContext
from synthflow.generators.base import Generator
from synthflow.prompts import all_prompt_names, load_prompt
from synthflow.record import Record

from .conftest import ROOT


def test_every_prompt_has_a_version_and_a_generator():
    names = all_prompt_names()
    assert names
    used = {
        t
        for kind in ("generator", "scorer")
        for g in registry.names(kind)
        for t in [
            *registry.get(kind, g).prompts.values(),
            *getattr(registry.get(kind, g), "persona_prompts", {}).values(),
            *filter(None, [getattr(registry.get(kind, g), "rewrite_prompt", None)]),
            *filter(None, [getattr(registry.get(kind, g), "anchored_prompt", None)]),
            *(
                [registry.get(kind, g).revise_prompt]
                if hasattr(registry.get(kind, g), "revise_prompt")
                else []
            ),
        ]
    }
    from synthflow.target import PROMPTS as TARGET_PROMPTS

    for f in registry.names("filter"):  # a filter's own prompt (the answer check's)
        field = registry.get("filter", f).Params.model_fields.get("prompt")
        if field is not None and isinstance(field.default, str):
            used.add(field.default)

    used |= set(TARGET_PROMPTS)  # synthflow target's student prompt
    for n in names:
        p = load_prompt(n)
        assert p.version and len(p.sha) == 8
        assert n in used, f"prompts/{n} is used by no generator or scorer"


def test_every_generator_template_renders_from_its_recipe():
    """Each generator renders each of its templates for planned items of a shipped recipe (StrictUndefined)."""
    from synthflow.recipe import load_recipe
    from synthflow.seeds import extract_seeds

    seen = set()
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        gen_cls = registry.get("generator", recipe.generator.name)
        gen = gen_cls(recipe, extract_seeds(recipe.seeds))
        for msgs in gen.render_examples():
            assert msgs and all(m["role"] in ("system", "user", "assistant") and m["content"] for m in msgs)
        seen.add(recipe.generator.name)
    assert seen == set(registry.names("generator")), "every generator needs a shipped recipe"


@pytest.mark.parametrize("name", registry.names("generator"))
def test_generator_declares_columns(name):
    cls = registry.get("generator", name)
    assert issubclass(cls, Generator) and cls.columns
    from synthflow.store import CORE_COLUMNS, REJECT_COLUMNS

    core = {n for n, _ in CORE_COLUMNS + REJECT_COLUMNS} | {"created_at"}
    for col, typ in cls.columns.items():
        assert isinstance(typ, pa.DataType), col
        assert col not in core and not col.startswith("score_"), f"{name}.{col} collides with a store column"
    for role in cls.schemas:
        assert role in cls.prompts


def _record(i: int, text: str) -> Record:
    return Record(
        id=f"r{i}",
        recipe="t",
        generator="math_pal",
        seed_id="s",
        fields={"problem": text, "program": "def solution():\n    return 2", "answer": "3"},
        messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "x"}],
    )


# params under which the contract records make a filter reject something (default: none)
CONTRACT_PARAMS = {
    "thresholds": {"min": {"prompt_words": 1000}},
    "select": {"by": ["prompt_words"], "min_distance": 0.5},
    "sft": {"max_seq_len": 8},
}


# filters that judge a row by what its generator says the row asks (tested in their own modules)
NEEDS_GENERATOR = {"answer_check"}


def _contract_text(name: str, i: int) -> str:
    """The i-th contract record's text: the same for all (duplicates), or a benchmark's for decontam."""
    if name == "decontaminate":
        from synthflow.dedup.decontam import load_benchmark

        return load_benchmark("humaneval").texts[i]
    return "Tom has three apples and buys two more apples at the market today. How many now?"


@pytest.mark.parametrize("name", registry.names("filter"))
def test_every_filter_returns_reasons(name, tmp_path):
    cls = registry.get("filter", name)
    assert issubclass(cls, Filter) and cls.stage
    params = cls.validate_params(CONTRACT_PARAMS.get(name, {}), name)
    f = cls(params, FilterContext(out_root=tmp_path, run_id="contract"))
    try:
        recs = [_record(i, _contract_text(name, i)) for i in range(4)]
        res = f(recs)
        if hasattr(f, "choose"):  # a pool-level selection: rows join the pool, then it chooses
            res = f.choose(res.kept, len(recs))
        if cls.stage != "score":  # what the accept step kept is admitted (dedup indexes it then)
            admitted = f.admit(res.kept)
            res.kept, res.rejects = admitted.kept, res.rejects + admitted.rejects
    finally:
        f.close()
    assert len(res.kept) + len(res.rejects) == 4
    if cls.stage == "score":  # scorers add columns and never drop
        assert not res.rejects and all(r.scores for r in res.kept)
        return
    if name in NEEDS_GENERATOR:  # rows no generator asked are kept untouched
        assert not res.rejects
        return
    assert res.rejects, f"{name}: contract input must produce at least one reject"
    for j in res.rejects:
        assert j.stage == cls.stage and j.reason and ":" in j.reason


def test_registry_did_you_mean():
    from synthflow.errors import UserError

    with pytest.raises(UserError, match="did you mean 'near_dedup'"):
        registry.get("filter", "neardedup")
