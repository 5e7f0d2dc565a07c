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


def test_seeds_without_the_field_the_generator_reads(tmp_path):
    """Seeds keyed ``subject`` where math_pal reads ``topic`` (or text): one line before the start,
    naming the seed file, the row and the field to set (was 0 rows accepted, exit 0, no warning)."""
    seeds = tmp_path / "subjects.jsonl"
    seeds.write_text('{"subject": "fractions"}\n{"subject": "speed"}\n')
    r = math_recipe(tmp_path, seeds=[{"source": "jsonl", "path": str(seeds)}])
    _assert_clean_failure(run_cli("run", str(r), cwd=tmp_path), tmp_path, f"{seeds}: row 1 has none of the fields",
                          "math_pal generator reads (topic, text,", "it has: subject", "seeds[0].field")  # fmt: skip


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


# ---- numbers out of range, readers, a read-only query -------------------------------------------
def _one_line(proc, *must_contain):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for s in must_contain:
        assert s in lines[0], lines[0]


def test_numbers_out_of_range_are_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a b c"}\n')
    out = str(tmp_path / "o")
    for args, name in [
        (("dedup", str(rows), "--out", out, "--num-perm", "0"), "--num-perm"),
        (("dedup", str(rows), "--out", out, "--shingle", "0"), "--shingle"),
        (("dedup", str(rows), "--out", out, "--threshold", "2"), "--threshold"),
        (("decontam", str(rows), "--out", out, "--ngram", "0"), "--ngram"),
        (("decontam", str(rows), "--out", out, "--coverage", "5"), "--coverage"),
        (("verify", str(rows), "--timeout", "-1"), "--timeout"),
        (("verify", str(rows), "--workers", "0"), "--workers"),
        (("query", "--max-rows", "-1", "SELECT 1"), "--max-rows"),
        (("train-scorer", str(rows), "--out", out, "--folds", "0"), "--folds"),
    ]:
        _one_line(run_cli(*args, cwd=tmp_path), name)
    assert not (tmp_path / "o").exists()


def test_a_jsonl_line_that_is_not_an_object_is_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a b c"}\n42\n')
    for args in (("dedup", str(rows), "--out", str(tmp_path / "o")), ("verify", str(rows))):
        _one_line(run_cli(*args, cwd=tmp_path), f"{rows}:2", "JSON object")


def test_mixed_column_types_and_non_utf8_text_are_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a b c d", "x": 1}\n{"text": "e f g h", "x": "one"}\n')
    out = str(tmp_path / "o")
    for args in (("dedup", str(rows), "--out", out), ("decontam", str(rows), "--out", out),
                 ("score", str(rows), "--scorer", "heuristics", "--out", out)):  # fmt: skip
        _one_line(
            run_cli(*args, cwd=tmp_path), str(rows), "column 'x' mixes types (number in row 1, str in row 2)"
        )
    latin = tmp_path / "eval.jsonl"
    latin.write_bytes(b'{"skill": "caf\xe9", "question": "q", "answer": "a"}\n')
    _one_line(run_cli("target", "--eval", str(latin), cwd=tmp_path), "--eval", "not UTF-8")
    assert not (tmp_path / "o").exists()


def test_a_truncated_parquet_file_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["a b c"] * 100}), p)
    p.write_bytes(p.read_bytes()[:40])
    _one_line(run_cli("dedup", str(p), "--out", str(tmp_path / "o"), cwd=tmp_path), str(p), "Parquet")


def test_query_is_read_only(tmp_path, prefect_harness):
    from flows.recipe_flow import run_recipe

    run_recipe(recipe=str(math_recipe(tmp_path, n=1, batch_size=8, max_items=8)))
    out = str(tmp_path / "out")
    ok = run_cli("query", "--out", out, "--format", "csv", "SELECT count(*) AS n FROM examples", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.splitlines()[0] == "n", ok.stderr
    for sql, words in [
        (f"COPY examples TO '{tmp_path}/leak.csv'", "COPY"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("DROP VIEW examples", "DROP"),
        (f"ATTACH '{tmp_path}/x.db'", "ATTACH"),
        ("SET enable_external_access=true", "SET"),
        ("SELECT * FROM read_csv('/etc/hostname')", "Permission"),
        ("SELECT CAST('x' AS INTEGER)", "Conversion"),
        ("", "empty query"),
        ("SELECT 1; DROP VIEW examples", "DROP"),
    ]:
        _one_line(run_cli("query", "--out", out, sql, cwd=tmp_path), "query:", words)
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "x.db").exists()


def test_set_with_an_empty_or_null_value_is_one_line(tmp_path):
    r = math_recipe(tmp_path)
    for kv in ("n=", "n=null", "generator.options.self_consistency=~"):
        _one_line(run_cli("run", str(r), "--set", kv, cwd=tmp_path), "--set", "empty or null")


def test_an_unwritable_output_is_one_line_before_anything_runs(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a b c"}\n')
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, words in [
        (("dedup", str(rows), "--out", str(afile)), "is a file"),
        (("dedup", str(rows), "--out", str(afile / "sub")), "which is a file"),
        (("verify", str(rows), "--out", str(tmp_path)), "is a folder"),
        (("run", str(math_recipe(tmp_path)), "--out", str(afile)), "is a file"),
    ]:
        _one_line(run_cli(*args, cwd=tmp_path), str(afile) if "afile" in args[-1] else str(tmp_path), words)
    assert afile.read_text() == "x"


def test_fail_short_makes_a_shortfall_an_error(tmp_path, prefect_harness):
    r = math_recipe(tmp_path, n=50, batch_size=8, max_items=8)
    p = run_cli("run", str(r), "--fail-short", cwd=tmp_path, shared_prefect=True)
    assert p.returncode == 3, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("synthflow: error: target not met: accepted") and "(--fail-short)" in last
    assert "target not met" in p.stdout and list((tmp_path / "out").glob("math/*/data/*.parquet"))
