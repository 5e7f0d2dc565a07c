"""The generator contract: every generator's golden prompts (rendered for its shipped recipe)."""

from __future__ import annotations

import pytest
import yaml

from synthflow import registry
from synthflow.recipe import load_recipe
from synthflow.seeds import extract_seeds

from .conftest import ROOT, assert_golden


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
