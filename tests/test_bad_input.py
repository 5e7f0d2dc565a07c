"""Bad input: one clear line on stderr, exit code 2, no traceback, no output files."""

from __future__ import annotations

import socket

from .conftest import math_recipe, run_cli


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _assert_clean_failure(proc, tmp_path, *must_contain):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("synthflow: error: ")
    for s in must_contain:
        assert s in lines[0], lines[0]
    out = tmp_path / "out"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))


def test_missing_recipe(tmp_path):
    p = run_cli("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "nope.yaml", "not found")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: math\ngenerator: {name: math_pal\n")
    p = run_cli("run", str(bad), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "bad.yaml", "invalid YAML")


def test_unknown_generator(tmp_path):
    r = math_recipe(tmp_path, generator__name="maths_pal")
    p = run_cli("run", str(r), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "generator.name", "did you mean 'math_pal'?")


def test_engine_endpoint_down(tmp_path):
    r = math_recipe(tmp_path)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    p = run_cli("run", str(r), "--engine", "openai", "--base-url", url, "--model", "m", cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, url, "not reachable")


def test_empty_seed_file(tmp_path):
    seeds = tmp_path / "empty.jsonl"
    seeds.write_text("\n")
    r = math_recipe(tmp_path, seeds=[{"source": "jsonl", "path": str(seeds)}])
    p = run_cli("run", str(r), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "empty.jsonl", "no seeds")


def test_malformed_seed_line(tmp_path):
    seeds = tmp_path / "bad.jsonl"
    seeds.write_text('{"topic": "a"}\n{"topic": \n')
    r = math_recipe(tmp_path, seeds=[{"source": "jsonl", "path": str(seeds)}])
    p = run_cli("run", str(r), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "bad.jsonl:2", "invalid JSON")


def test_query_without_runs(tmp_path):
    p = run_cli("query", "SELECT 1", "--out", "nowhere", cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "nowhere: no finished runs here")


def test_recipe_value_out_of_range(tmp_path):
    """``--n 0`` passes argparse; the recipe's validation names the field (``--n zero`` only ever
    reached argparse)."""
    p = run_cli("run", str(math_recipe(tmp_path)), "--n", "0", cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "recipe.yaml: field n: Input should be greater than 0")
    p = run_cli("run", str(math_recipe(tmp_path)), "--set", "generator.options.few_shot=99", cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "field generator.options.few_shot", "less than or equal to 8")


def test_binary_recipe_and_seed_files(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00\x01garbage")
    p = run_cli("run", str(binary), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "binary.yaml: not UTF-8 text (byte 8)")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b'{"topic": "a"}\n{"topic": "\xff"}\n')
    r = math_recipe(tmp_path, seeds=[{"source": "jsonl", "path": str(seeds)}])
    p = run_cli("run", str(r), cwd=tmp_path)
    _assert_clean_failure(p, tmp_path, "seeds.jsonl:2: not UTF-8 text")
