"""Helpers several test modules share: running the flow on a recipe, and reading a run's
published rows, rejects and Prefect task graph back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

# what a row is, apart from its run (ids and run ids differ per run; timings differ per call)
VOLATILE = {
    "id",
    "run_id",
    "created_at",
    "engine_seconds",
    "verify_duration_s",
    "cache_hit",
    "verify_details",
}


def table_rows(run_dir: Path, table: str) -> list[dict]:
    return [r for f in sorted((run_dir / table).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def content(run_dir: Path, table: str = "data") -> list[str]:
    """A run's rows as sorted JSON lines, without what differs from run to run."""
    out = []
    for r in table_rows(run_dir, table):
        r = {k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("si_in_context")}
        out.append(json.dumps(r, sort_keys=True, default=str))
    return sorted(out)


def reasons(run_dir: Path) -> list[tuple[int, str, str]]:
    """(item, stage, reason head) of every reject."""
    from synthflow.record import reason_head

    rows = table_rows(run_dir, "rejects")
    return sorted((r["item"], r["reject_stage"], reason_head(r["reject_reason"])) for r in rows)


def run_flow(
    run_recipe, recipe: Path, out: Path, cache: Path, monkeypatch, sets: list[str] | None = None, **kw
):
    """Run the flow (``run_recipe``, possibly a patched module's) on ``recipe`` with its own
    response cache; ``sets`` are --set overrides, ``kw`` the flow's other parameters."""
    from synthflow.spec import Overrides

    monkeypatch.setenv("SYNTHFLOW_RESPONSE_CACHE", str(cache))
    return run_recipe(recipe=str(recipe), overrides=Overrides(out=str(out), sets=sets), **kw)


def run_local(recipe: Path, out: Path, cache: Path, monkeypatch, sets: list[str] | None = None) -> dict:
    """A whole run without Prefect (the plain batch loop), with its own response cache: for tests
    of what the steps do to rows. Prefect's part (tasks, retries, artifacts) has tests of its own."""
    from synthflow.run import run_plain
    from synthflow.spec import Overrides

    monkeypatch.setenv("SYNTHFLOW_RESPONSE_CACHE", str(cache))
    return run_plain(str(recipe), Overrides(out=str(out), sets=sets))


def task_upstreams() -> dict[str, set[str]]:
    """For the newest flow run: each task name -> the names of the tasks whose results it took."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def graph():
        async with get_client() as c:
            return await c.read_task_runs()

    runs = [r for r in asyncio.run(graph()) if r.state and r.state.is_completed()]
    last_flow = max(runs, key=lambda r: r.expected_start_time).flow_run_id
    runs = [r for r in runs if r.flow_run_id == last_flow]
    by_id = {r.id: r for r in runs}
    upstream: dict[str, set[str]] = {}
    for r in runs:
        ups = {by_id[i.id].name.rsplit("-", 1)[0] for v in r.task_inputs.values() for i in v if i.id in by_id}
        upstream.setdefault(r.name.rsplit("-", 1)[0], set()).update(ups)
    return upstream


def make_generator(tmp_path: Path, recipe: str, script: str, **options):
    """The generator of a shipped recipe on the scripted engine ``script`` (tests/data), with
    generator ``options`` changed: (generator, engine)."""
    import yaml

    from synthflow import registry
    from synthflow.engines.fake import FakeEngine
    from synthflow.recipe import load_recipe
    from synthflow.seeds import extract_seeds

    from .conftest import DATA, ROOT

    data = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    data["engine"] = {"name": "fake", "options": {"script": str(DATA / script)}}
    data["generator"].setdefault("options", {}).update(options)
    if script == "fake_templates.json":  # topic templates, not anchored to GSM8K problems
        from .conftest import TOPIC_SEEDS

        data["seeds"] = TOPIC_SEEDS
        data["generator"]["options"]["anchor"] = options.get("anchor", False)
    p = tmp_path / f"{recipe}.yaml"
    p.write_text(yaml.safe_dump(data))
    r = load_recipe(p)
    gen = registry.get("generator", r.generator.name)(r, extract_seeds(r.seeds))
    return gen, FakeEngine(DATA / script)


def expected_figures(run_dir: Path) -> int:
    """How many plots a run's report should draw, counted from its Parquet files."""
    data, rej = table_rows(run_dir, "data"), table_rows(run_dir, "rejects")
    rows = data + rej

    def has(col: str, among: list[dict]) -> bool:
        return any(r.get(col) is not None and r.get(col) == r.get(col) for r in among)

    from synthflow.report import MIN_POINTS

    def values(col: str, among: list[dict]) -> list:
        return [r[col] for r in among if r.get(col) is not None and r.get(col) == r.get(col)]

    n = 1  # the funnel
    for c in {k for r in rows for k in r if k.startswith("score_")}:  # a histogram: enough values, not one
        v = values(c, rows)
        n += len(v) >= MIN_POINTS and len(set(v)) > 1
    n += len(values("n_tokens", rows)) >= MIN_POINTS
    n += sum(bool(r.get("prompt_tokens")) + bool(r.get("completion_tokens")) for r in data) >= MIN_POINTS
    n += any(r.get("instruction_id_list") for r in data)  # constraints
    n += has("task_type", data)
    n += any(r.get("skills") for r in data)  # skill counts
    n += any(len(set(r.get("skills") or [])) > 1 for r in data)  # skill x skill pairs
    n += any(r.get("ai_skill") for r in data)
    n += has("template_id", data) + has("cluster_id", data)
    splits = {r.get("split") for r in data} - {None}
    n += bool(splits) and (len(splits) > 1 or has("template_id", data))
    return n


def sandbox_processes() -> list[str]:
    """Processes owned by the sandbox uids that descend from this test process (none should be left
    between programs). Sandboxes of tests running beside this one (pytest-xdist) are not counted."""
    import os
    import subprocess

    from synthflow.sandbox.isolation import UID_BASE

    out = subprocess.run(["ps", "-eo", "uid=,pid=,ppid=,cmd="], capture_output=True, text=True).stdout
    rows = [ln.split(None, 3) for ln in out.splitlines() if ln.split()]
    parent = {int(r[1]): int(r[2]) for r in rows}

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [" ".join(r) for r in rows if UID_BASE <= int(r[0]) < UID_BASE + 64 and ours(int(r[1]))]


def assert_funnel_adds_up(summary: dict) -> None:
    """Each stage's rows are the previous stage's rows minus the rows rejected at that stage, in the
    summary, the card and the Prefect table alike (they all come from ``funnel``)."""
    from synthflow.funnel import FUNNEL_REJECTS, funnel

    f = funnel(summary)
    for prev, cur in zip(f, f[1:], strict=False):
        assert cur["rows"] == prev["rows"] - sum(cur["removed"].values()), (prev, cur)
    by_stage = summary["rejects_by_stage"]
    assert set(by_stage) <= {s for stages in FUNNEL_REJECTS.values() for s in stages}, by_stage
    assert f[-1]["rows"] == summary["counts"]["accepted"]
    assert f[0]["rows"] == summary["counts"]["accepted"] + sum(
        by_stage.values()
    )  # every row is data or a reject
    card = (Path(summary["path"]) / "README.md").read_text()
    for row in f:
        assert f"| {row['stage']} | {row['rows']} |" in card
