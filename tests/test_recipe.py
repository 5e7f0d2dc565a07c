"""Recipe validation: one line naming the file and field, did-you-mean on typos."""

from __future__ import annotations

import pytest
import yaml

from synthflow.errors import UserError
from synthflow.recipe import load_recipe

from .conftest import ROOT, math_recipe


def _err(path) -> str:
    with pytest.raises(UserError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_shipped_recipes_validate():
    for p in sorted((ROOT / "recipes").glob("*.yaml")):
        r = load_recipe(p)
        assert r.name == p.stem


def test_missing_file(tmp_path):
    assert _err(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: recipe file not found"


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngenerator: [unclosed\n")
    msg = _err(p)
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg


def test_unknown_generator_did_you_mean(tmp_path):
    p = math_recipe(tmp_path, generator__name="math_pall")
    msg = _err(p)
    assert "field generator.name" in msg and "did you mean 'math_pal'?" in msg


def test_unknown_field_did_you_mean(tmp_path):
    p = math_recipe(tmp_path)
    d = yaml.safe_load(p.read_text())
    d["sampling"]["temprature"] = 0.3
    p.write_text(yaml.safe_dump(d))
    msg = _err(p)
    assert msg == f"{p}: field sampling.temprature: unknown field; did you mean 'temperature'?"


def test_bad_value_names_field(tmp_path):
    p = math_recipe(tmp_path, n=-3)
    assert _err(p).startswith(f"{p}: field n: Input should be greater than 0")


def test_unknown_filter_and_param(tmp_path):
    p = math_recipe(tmp_path, filters=[{"name": "near_dedupe"}])
    assert "did you mean 'near_dedup'?" in _err(p)
    p = math_recipe(tmp_path, filters=[{"name": "near_dedup", "treshold": 0.5}])
    msg = _err(p)
    assert "filters[0].treshold" in msg and "did you mean 'threshold'?" in msg


def test_unknown_prompt_template(tmp_path):
    p = math_recipe(tmp_path, generator__prompts={"generate": "math/pals.jinja2"})
    msg = _err(p)
    assert "generator.prompts.generate" in msg and "math/pal.jinja2" in msg


def test_fingerprint_ignores_output_root(tmp_path):
    a = load_recipe(math_recipe(tmp_path))
    b = load_recipe(math_recipe(tmp_path, output={"root": "elsewhere"}))
    c = load_recipe(math_recipe(tmp_path, n=7))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
