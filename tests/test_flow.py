"""The Prefect flow under prefect_test_harness with the fake engine: output layout, schema,
DuckDB and HF datasets readers, summary counts, rejects with stage and reason."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest

from synthflow.cli import connect
from synthflow.store import CORE_COLUMNS, STAGING

from .conftest import math_recipe


@pytest.fixture
def finished_run(math_flow_run):
    """The session's published math run (read only)."""
    return math_flow_run


def test_flow_writes_dataset(finished_run):
    tmp_path, s = finished_run
    c = s["counts"]
    assert c["seeds"] == 40 and c["accepted"] == 4
    assert c["generated"] >= c["parsed"] >= c["verified"] >= c["deduped"] >= c["scored"] >= c["accepted"]
    run_dir = tmp_path / "out" / "math" / s["run_id"]
    assert (run_dir / "_SUCCESS").is_file() and (run_dir / "README.md").is_file()
    files = sorted((run_dir / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00001.parquet"]
    t = pq.read_table(files[0])
    for name, typ in CORE_COLUMNS:
        assert t.schema.field(name).type == typ, name
    for col in ("problem", "program", "answer", "score_repetition", "created_at"):
        assert col in t.column_names
    rows = t.to_pylist()
    assert all(r["verify_status"] == "pass" and r["recipe"] == "math" for r in rows)
    assert all(r["messages"][0]["role"] == "user" for r in rows)
    # nothing half-written is left in staging
    assert not list((tmp_path / "out" / STAGING).glob("**/*.tmp"))


def test_rejects_have_stage_and_reason(finished_run):
    tmp_path, s = finished_run
    con = connect(str(tmp_path / "out"))
    reasons = dict(con.sql("SELECT reject_reason, count(*) FROM rejects GROUP BY 1").fetchall())
    stages = {r for (r,) in con.sql("SELECT DISTINCT reject_stage FROM rejects").fetchall()}
    assert "parse:no_program" in reasons
    assert any(r.startswith("dedup:") for r in reasons)
    assert "verify:timeout" in reasons  # the infinite loop in the fake script
    assert {"parse", "verify", "dedup"} <= stages
    # every generated row ends as a published row or a reject (counted apart: generator vs store)
    assert sum(reasons.values()) == s["counts"]["generated"] - s["counts"]["accepted"]


def test_duckdb_and_datasets_read_output(finished_run):
    tmp_path, s = finished_run
    out = tmp_path / "out"
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/**/data/*.parquet', hive_partitioning=true) WHERE recipe='math'"
    ).fetchall()[0][0]
    assert n == 4
    assert connect(str(out)).sql("SELECT count(*) FROM examples WHERE recipe='math'").fetchall()[0][0] == 4
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(out / "math" / s["run_id"] / "data" / "*.parquet"), split="train"
    )
    assert len(ds) == 4 and ds[0]["messages"][0]["role"] == "user"
    summary = json.loads((out / "math" / s["run_id"] / "summary.json").read_text())
    assert summary["counts"]["accepted"] == 4


def test_dataset_card_has_hf_metadata(finished_run):
    tmp_path, s = finished_run
    card = (tmp_path / "out" / "math" / s["run_id"] / "README.md").read_text()
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    assert meta["license"] == "apache-2.0" and "text-generation" in meta["task_categories"]


def test_template_recipe_publishes_disjoint_splits(tmp_path, prefect_harness):
    import yaml

    from flows.recipe_flow import run_recipe

    from .conftest import DATA, ROOT, TOPIC_SEEDS, scorers_on_generator_engine

    data = yaml.safe_load((ROOT / "recipes" / "math_templates.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / "fake_templates.json")}}
    scorers_on_generator_engine(data)
    data["seeds"] = TOPIC_SEEDS
    data["generator"]["options"].update(test_fraction=0.5, variants_per_template=4, anchor=False)
    data["output"] = {"root": str(tmp_path / "out")}
    data.update(n=1000, batch_size=20, max_items=40)
    # the fake engine writes the same template text every time: keep near-dup out of this test
    data["filters"] = [f for f in data["filters"] if f["name"] != "near_dedup"]
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(data))
    s = run_recipe(recipe=str(p))
    run_dir = tmp_path / "out" / "math_templates" / s["run_id"]
    train = pq.read_table(next((run_dir / "data").glob("train-*.parquet"))).to_pylist()
    test = pq.read_table(next((run_dir / "data").glob("test-*.parquet"))).to_pylist()
    assert train and test
    assert not {r["template_id"] for r in train} & {r["template_id"] for r in test}
    assert all(r["split"] == "train" for r in train) and all(r["split"] == "test" for r in test)
    card = yaml.safe_load((run_dir / "README.md").read_text().split("---")[1])
    assert {f["split"] for f in card["configs"][0]["data_files"]} == {"train", "test"}
    assert "## Template provenance" in (run_dir / "README.md").read_text()


def test_a_later_run_draws_new_items(tmp_path, prefect_harness):
    """A second run of the same recipe continues the sample stream: its items start where the first
    run's ended, so none of its prompts is a cache hit (with offset 0 every one would be)."""
    import pyarrow.parquet as pq

    from flows.recipe_flow import run_recipe

    recipe = str(math_recipe(tmp_path, n=1000, batch_size=8, max_items=16))
    s1 = run_recipe(recipe=recipe)
    s2 = run_recipe(recipe=recipe)
    assert s1["item_offset"] == 0 and s2["item_offset"] == s1["items_planned"] == 16
    assert s2["cache"]["hits"] == 0 and s2["cache"]["misses"] == 16
    rows = pq.read_table(
        next((tmp_path / "out" / "math" / s2["run_id"] / "rejects").glob("*.parquet"))
    ).to_pylist()
    assert rows and min(r["item"] for r in rows) >= 16


def test_rows_past_the_target_are_over_target_rejects(tmp_path, prefect_harness):
    import pyarrow.parquet as pq

    from flows.recipe_flow import run_recipe
    from synthflow.seeds import jsonl_seeds

    rules = []
    for k, seed in enumerate(jsonl_seeds("builtin:math_seeds.jsonl")):
        a, b = k + 3, k + 11
        rules.append({
            "match": f"Topic: {seed.data['topic']}$",
            "reply": f"Problem: A shelf about {seed.data['topic']} holds {a} boxes with {b} cards in each box. "
            f"How many cards are on the shelf?\nProgram:\n```python\ndef solution():\n    boxes = {a}\n"
            f"    per_box = {b}\n    return boxes * per_box\n```\nAnswer: {a * b}",
        })  # fmt: skip
    script = tmp_path / "distinct.json"
    script.write_text(json.dumps(rules))
    engine = {"name": "fake", "options": {"script": str(script)}}
    s = run_recipe(recipe=str(math_recipe(tmp_path, n=2, batch_size=40, max_items=40, engine=engine)))
    run_dir = tmp_path / "out" / "math" / s["run_id"]
    data = pq.read_table(next((run_dir / "data").glob("*.parquet"))).to_pylist()
    rej = pq.read_table(next((run_dir / "rejects").glob("*.parquet"))).to_pylist()
    over = [r for r in rej if r["reject_reason"] == "over_target"]
    assert len(data) == 2 and s["counts"]["accepted"] == 2
    assert len(over) == s["over_target"] > 0
    assert all(r["reject_stage"] == "accept" and r["verify_status"] == "pass" for r in over)
    assert not {r["id"] for r in over} & {r["id"] for r in data}


def test_a_cli_run_shows_in_the_prefect_ui(tmp_path, prefect_harness):
    """What the Prefect UI shows of a CLI run (through the API): the flow run is named after the
    recipe and run id and tagged with recipe, model and engine; synthflow's INFO lines are in its
    logs (the terminal shows none of them); the graph starts at extract-seeds and ends at write;
    the key-figures artifact names the report's path, not a file:// link."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    from .conftest import run_cli

    recipe = math_recipe(tmp_path, n=4, batch_size=8, max_items=32)
    p = run_cli("run", str(recipe), "--out", str(tmp_path / "out"), cwd=tmp_path, shared_prefect=True,
                env={"SYNTHFLOW_PROGRESS": "0"})  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "INFO" not in p.stdout + p.stderr and len(p.stdout.splitlines()) <= 30
    run_id = json.loads(next((tmp_path / "out").glob("math/*/summary.json")).read_text())["run_id"]
    # the run's processes logged to a file, copied into the run folder; the summary names it
    assert (tmp_path / "out" / "math" / run_id / "run.log").is_file() and "full log: " in p.stdout
    with get_client(sync_client=True) as client:
        (fr,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"math-{run_id}"]))
        )
        assert {"recipe:math", "engine:fake", "model:HuggingFaceTB/SmolLM2-135M-Instruct"} <= set(fr.tags)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
        text = [lg.message for lg in logs]
        assert any(m.startswith(f"run {run_id} of recipe math") for m in text), text[:5]
        assert any(m.startswith("batch 0: accepted") for m in text), text[:5]
        tasks = {t.name: t for t in client.read_task_runs() if t.flow_run_id == fr.id}
        ids_in = lambda t: {i.id for ins in t.task_inputs.values() for i in ins if hasattr(i, "id")}  # noqa: E731
        seeds = next(t for n, t in tasks.items() if n.startswith("extract-seeds"))
        assert seeds.id in ids_in(tasks["generate-0"])  # extract-seeds -> generate-0
        write = next(t for n, t in tasks.items() if n.startswith("write"))
        assert ids_in(write) & {t.id for n, t in tasks.items() if n.startswith(("accept-", "score-"))}
        arts = [a for a in client.read_artifacts() if a.key == "math-report" and a.flow_run_id == fr.id]
    assert arts and "report.html" in arts[0].data and "file://" not in arts[0].data
