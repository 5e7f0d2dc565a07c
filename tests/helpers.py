"""Helpers several test modules share: running the flow on a recipe, and reading a run's
published rows, rejects and Prefect task graph back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

# what a row is, apart from its run (ids and run ids differ per run; timings differ per call)
_VOLATILE = {
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
        r = {k: v for k, v in r.items() if k not in _VOLATILE and not k.startswith("si_in_context")}
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
