"""The distilled scorer end to end through the CLI: train-scorer, then score --scorer sklearn:DIR on
held-out tasks; safe loading; bad input is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import random
import shutil

import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from synthflow.cli import main

from .conftest import SEED_TASKS, math_recipe
from .labelled import labelled_rows


def _split(tmp_path):
    """Labelled rows from both seed sets, split by task: no task is in train and test."""
    from synthflow.seeds import BUILTIN_DIR

    rows = labelled_rows(SEED_TASKS) + labelled_rows(BUILTIN_DIR / "self_instruct_seeds.jsonl", seed=1)
    tasks = sorted({r["task"].split("#")[0] for r in rows})
    random.Random(0).shuffle(tasks)
    test_tasks = set(tasks[: len(tasks) // 4])
    train = [r for r in rows if r["task"].split("#")[0] not in test_tasks]
    test = [r for r in rows if r["task"].split("#")[0] in test_tasks]
    paths = []
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in part))
        paths.append(p)
    return paths


def test_train_then_score_on_held_out_tasks(tmp_path, capsys):
    train, test = _split(tmp_path)
    model = tmp_path / "models" / "quality"
    fields = ["--instruction-field", "instruction", "--response-field", "response"]
    assert main(["train-scorer", str(train), "--label-field", "good", *fields, "--out", str(model)]) == 0
    out = capsys.readouterr().out
    assert "cross-validated AUC" in out and f"--scorer sklearn:{model}" in out
    meta = json.loads((model / "scorer.json").read_text())
    assert meta["task"] == "binary" and meta["metrics"]["metric"] == "auc" and meta["metrics"]["value"] > 0.85
    assert len(meta["training"]["fingerprint"]) == 16 and meta["label_field"] == "good"

    assert main(["score", str(test), "--scorer", f"sklearn:{model}", "--scorer", "heuristics", *fields, "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    t = pq.read_table(tmp_path / "s" / "scored.parquet")
    src = [json.loads(line) for line in test.read_text().splitlines()]
    assert t.num_rows == len(src)
    for col in ("id", "instruction", "response", "good", "task", "score_clf", "score_repetition"):
        assert col in t.column_names, col
    rows = t.to_pylist()
    assert [r["id"] for r in rows] == [r["id"] for r in src]  # input order and ids kept
    auc = roc_auc_score([r["good"] for r in rows], [r["score_clf"] for r in rows])
    print(f"held-out AUC {auc:.3f} on {len(rows)} rows")
    assert auc >= 0.9, f"held-out AUC {auc:.3f}"


def test_numeric_label_trains_a_regressor(tmp_path, labelled, capsys):
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["stars"] = (8 if r["good"] else 2) + (i % 3)
    p = tmp_path / "stars.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = ["--instruction-field", "instruction", "--response-field", "response"]
    assert (
        main(["train-scorer", str(p), "--label-field", "stars", *fields, "--out", str(tmp_path / "m")]) == 0
    )
    assert "cross-validated spearman" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "scorer.json").read_text())["task"] == "regression"
    assert main(["train-scorer", str(p), "--label-field", "stars", "--threshold", "7", *fields, "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "b" / "scorer.json").read_text())["task"] == "binary"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_scorer_inputs_are_one_line_and_write_nothing(tmp_path, capsys, trained_scorer, labelled):
    out = tmp_path / "out"
    fields = ["--instruction-field", "instruction", "--response-field", "response"]
    cases = [
        (["score", str(labelled), "--scorer", "judeg", *fields, "--out", str(out)], "did you mean 'judge'"),
        (["score", str(labelled), "--scorer", "heuristics", "--instruction-field", "prompt", "--out", str(out)],
         "labelled.jsonl: no field 'prompt'"),
        (["score", str(tmp_path / "missing.jsonl"), "--scorer", "heuristics", "--out", str(out)], "missing.jsonl: file not found"),
        (["score", str(labelled), "--scorer", f"sklearn:{tmp_path}", *fields, "--out", str(out)], "not a synthflow scorer"),
        (["score", str(labelled), "--scorer", "heuristics", "--param", "judge.sample=0.2", "--out", str(out)],
         "scorer 'judge' is not among --scorer heuristics"),
        (["score", str(labelled), "--scorer", "heuristics", *fields], "--out DIR is required"),
        (["train-scorer", str(labelled), "--label-field", "nope", *fields, "--out", str(out / "m")], "no such field"),
        (["train-scorer", str(labelled), "--label-field", "instruction", *fields, "--out", str(out / "m")],
         "labels must be numbers or booleans"),
    ]  # fmt: skip
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases.append((["score", str(empty), "--scorer", "heuristics", "--out", str(out)], "no input rows"))
    for argv, msg in cases:
        assert main(argv) == 2, argv
        line = _err(capsys)
        assert msg in line, (argv, line)
        assert not out.exists() or not any(out.rglob("*")), f"{argv} left files behind"


def test_scorer_model_loads_safely(tmp_path, capsys, trained_scorer, labelled):
    """A model folder from a newer synthflow, or one whose weights file holds a pickled object (a
    function such as os.system), is refused before anything in it runs."""
    import numpy as np

    fields = [
        "--instruction-field",
        "instruction",
        "--response-field",
        "response",
        "--out",
        str(tmp_path / "o"),
    ]
    newer = tmp_path / "newer"
    shutil.copytree(trained_scorer, newer)
    meta = json.loads((newer / "scorer.json").read_text())
    meta["format_version"] = 99
    (newer / "scorer.json").write_text(json.dumps(meta))
    assert main(["score", str(labelled), "--scorer", f"sklearn:{newer}", *fields]) == 2
    assert "scorer format version 99; this synthflow reads version 1" in _err(capsys)

    hostile = tmp_path / "hostile"
    shutil.copytree(trained_scorer, hostile)
    import os

    np.savez(hostile / "model.npz", coef=np.array([os.system], dtype=object), intercept=np.array([0.0]))
    assert main(["score", str(labelled), "--scorer", f"sklearn:{hostile}", *fields]) == 2
    assert "Object arrays cannot be loaded when allow_pickle=False" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_recipe_fingerprint_hashes_the_scorer_content_not_its_path(tmp_path, trained_scorer):
    from synthflow.recipe import load_recipe

    copy = tmp_path / "copy"
    shutil.copytree(trained_scorer, copy)
    a = load_recipe(math_recipe(tmp_path, scoring={f"sklearn:{trained_scorer}": {}})).fingerprint()
    b = load_recipe(math_recipe(tmp_path, scoring={"sklearn": {"model": str(copy)}})).fingerprint()
    assert a == b
    meta = json.loads((copy / "scorer.json").read_text())
    meta["metrics"]["value"] = 0.5
    (copy / "scorer.json").write_text(json.dumps(meta))
    assert load_recipe(math_recipe(tmp_path, scoring={"sklearn": {"model": str(copy)}})).fingerprint() != a


@pytest.fixture
def fake_run(math_flow_run, tmp_path):
    """A copy of the session's published math run (rescoring changes it in place)."""
    import shutil

    src, s = math_flow_run
    shutil.copytree(src / "out", tmp_path / "out", symlinks=True)
    return tmp_path / "out" / "math" / s["run_id"], s


def test_flow_writes_score_columns_and_distributions(fake_run):
    run_dir, s = fake_run
    rows = pq.read_table(next((run_dir / "data").glob("*.parquet"))).to_pylist()
    assert rows and all(r["score_ifd"] is not None and r["score_response_loss"] > 0 for r in rows)
    assert s["scores"]["ifd"]["scored"] >= len(rows) and "median" in s["scores"]["ifd"]
    assert set(s["roles"]) == {"generator", "scorer_model"}
    assert s["roles"]["scorer_model"]["completion_tokens"] == 0 and s["roles"]["scorer_model"]["misses"] > 0
    assert s["tokens"]["prompt"] == s["roles"]["generator"]["prompt_tokens"]  # scoring is not generation
    card = (run_dir / "README.md").read_text()
    assert "## Scores" in card and "| `score_ifd` |" in card


def test_rescore_a_published_run_in_place(fake_run, trained_scorer, capsys):
    from synthflow.cli import connect

    run_dir, s = fake_run
    before = {p.name for p in (run_dir / "data").iterdir()}
    assert main(["score", str(run_dir), "--scorer", f"sklearn:{trained_scorer}"]) == 0
    assert {p.name for p in (run_dir / "data").iterdir()} == before  # same files, new version
    con = connect(str(run_dir.parent.parent))
    n, scored = con.execute("SELECT count(*), count(score_clf) FROM examples").fetchone()
    assert n == s["counts"]["accepted"] and scored == n
    # rejects are re-scored too, so a new threshold stays a query
    n_rej, scored_rej = con.execute("SELECT count(*), count(score_clf) FROM rejects").fetchone()
    assert n_rej > 0 and scored_rej == n_rej
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rescored"][-1]["columns"] == ["clf"]
