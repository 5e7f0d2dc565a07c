"""Recipe validation: one line naming the file and field, did-you-mean on typos."""

from __future__ import annotations

import os

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


def test_a_verifier_that_reads_what_the_generator_does_not_write_fails_at_load(tmp_path):
    """math_pal writes no ``tests``: a recipe that verifies its rows with python_tests is refused
    when it is loaded, naming the filter and the field, not on the first batch."""
    p = math_recipe(tmp_path, filters=[{"name": "verify", "kind": "python_tests"}])
    msg = _err(p)
    assert msg.startswith(f"{p}: field filters[0] (verify): reads field 'solution'"), msg
    assert "generator math_pal" in msg


def test_a_text_field_that_nothing_writes_fails_at_load(tmp_path):
    p = math_recipe(tmp_path, filters=[{"name": "exact_dedup", "field": "problem+instruction"}])
    assert "field filters[0] (exact_dedup): reads field 'instruction'" in _err(p)


def test_fields_written_by_an_earlier_step_may_be_read_later(tmp_path):
    """CodeT's verifier writes ``solution``; the code recipe's dedup reads it (problem+solution)."""
    d = yaml.safe_load((ROOT / "recipes" / "code.yaml").read_text())
    d["filters"] = [{"name": "exact_dedup", "field": "problem+solution"}, *d["filters"]]
    p = tmp_path / "code.yaml"
    p.write_text(yaml.safe_dump(d))
    assert load_recipe(p).filters[0].name == "exact_dedup"
    d["filters"] = [f for f in d["filters"] if f["name"] != "verify"]
    p.write_text(yaml.safe_dump(d))
    assert "reads field 'solution'" in _err(p)


def test_recipes_by_name_from_an_installed_wheel(tmp_path):
    """The shipped recipes and prompts are package data: from a wheel of this checkout (unpacked,
    imported instead of the checkout), in a folder with no ``recipes/``, a recipe loads by name with
    its prompts, the copies equal the checkout's files, and a path still works."""
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("synthflow-*.whl"))) as z:
        z.extractall(site)
    for name in ("recipes", "prompts"):
        shipped = sorted(p.relative_to(ROOT / name) for p in (ROOT / name).rglob("*") if p.is_file())
        copied = site / "synthflow" / f"_{name}"
        assert not copied.is_symlink() and shipped
        for rel in shipped:
            assert (copied / rel).read_bytes() == (ROOT / name / rel).read_bytes(), rel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.yaml").write_text((ROOT / "recipes" / "code.yaml").read_text())
    probe = (
        "import synthflow; from synthflow.recipe import load_recipe; from synthflow.prompts import load_prompt\n"
        "print(synthflow.__file__)\n"
        "for name in ('math', 'skillmix', 'mine.yaml'):\n"
        "    r = load_recipe(name); print(r.name)\n"
        "print(load_prompt('math/pal').version)\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere,
                       env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0] == str(site / "synthflow" / "__init__.py")
    assert lines[1:4] == ["math", "skillmix", "code"] and lines[4]
