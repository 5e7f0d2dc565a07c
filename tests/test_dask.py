"""The Dask path for the CPU stages: `synthflow verify --dask`, `synthflow score --dask`
and the flow's verify step on a LocalCluster of 2 worker processes give what the one-process path
gives, in input order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from .conftest import THREAD_ENV, math_recipe, run_cli
from .helpers import content, run_flow

PROGRAMS = [
    ("ok", "def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5"),
    ("wrong", "def add(a, b):\n    return a - b\n", "assert add(2, 3) == 5"),
    # a result whose __eq__ is always True must still fail (the verdict is decided outside)
    (
        "forged_eq",
        "class A:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return A()\n",
        "assert add(2, 3) == 5",
    ),
    ("loop", "def add(a, b):\n    while True:\n        pass\n", "assert add(2, 3) == 5"),
    ("exit", "import os\ndef add(a, b):\n    os._exit(0)\n", "assert add(2, 3) == 5"),
] * 4


def test_verify_on_dask_gives_the_same_verdicts_in_order(tmp_path):
    src = tmp_path / "progs.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"{n}-{i}", "code": c, "tests": t}) + "\n"
            for i, (n, c, t) in enumerate(PROGRAMS)
        )
    )
    verdicts = {}
    for label, extra in (("plain", []), ("dask", ["--dask", "local:2"])):
        out = tmp_path / f"{label}.jsonl"
        p = run_cli("verify", str(src), "--format", "jsonl", "--timeout", "2", "--out", str(out), *extra)
        assert p.returncode == 0, p.stderr[-2000:]
        verdicts[label] = [
            (d["id"], d["status"], d["status"] == "pass")
            for d in map(json.loads, out.read_text().splitlines())
        ]
    assert verdicts["plain"] == verdicts["dask"]
    passed = [i for i, _, ok in verdicts["dask"] if ok]
    assert passed and all(i.startswith("ok-") for i in passed) and len(passed) == 4
    assert "4 passed, 16 failed" in p.stdout


def test_score_on_dask_gives_the_same_columns(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": f"Explain topic {i} in a few sentences."},
                {"role": "assistant", "content": ("word " * (i % 7 + 1) + f"answer {i}. ") * (i % 5 + 1)},
            ],
        }
        for i in range(300)
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tables = {}
    for label, extra in (("plain", []), ("dask", ["--dask", "local:2"])):
        out = tmp_path / label
        p = run_cli(
            "score",
            str(src),
            "--scorer",
            "heuristics",
            "--out",
            str(out),
            *extra,
            env={"SYNTHFLOW_PROGRESS": "0"},
        )
        assert p.returncode == 0, p.stderr[-2000:]
        tables[label] = pq.read_table(out / "scored.parquet").to_pylist()
    assert tables["plain"] == tables["dask"]
    assert any(k.startswith("score_") for k in tables["dask"][0])


def test_score_on_dask_refuses_an_engine_scorer(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        + "\n"
    )
    p = run_cli(
        "score",
        str(src),
        "--scorer",
        "ifd",
        "--engine",
        "fake",
        "--out",
        str(tmp_path / "o"),
        "--dask",
        "local:2",
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1


def test_flow_verify_step_on_dask_publishes_the_same_rows(tmp_path, prefect_harness, monkeypatch):
    from flows.recipe_flow import run_recipe

    # distributed's Nanny writes OMP_NUM_THREADS=1 into this process's environment before it
    # spawns a worker; left there, every vLLM engine started after the step ran on one thread
    before = {k: os.environ.get(k) for k in THREAD_ENV}

    recipe = math_recipe(tmp_path, n=6, batch_size=16, max_items=64)
    one = run_flow(run_recipe, recipe, tmp_path / "one", tmp_path / "one.sqlite3", monkeypatch)
    two = run_flow(
        run_recipe, recipe, tmp_path / "two", tmp_path / "two.sqlite3", monkeypatch, dask="local:2"
    )
    assert content(Path(one["path"])) and content(Path(one["path"])) == content(Path(two["path"]))
    assert two["filters"]["verify"]["sandbox"] == one["filters"]["verify"]["sandbox"]
    assert {k: os.environ.get(k) for k in THREAD_ENV} == before
