"""Scheduling: prefect.yaml has one cron deployment per recipe; `prefect deploy --all` (make deploy)
registers them, and the flow.serve path (make serve) builds the same deployments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT


def test_one_scheduled_deployment_per_recipe():
    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    by_recipe = {Path(s["parameters"]["recipe"]).stem: s for s in specs}
    assert set(by_recipe) == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    for spec in specs:
        assert spec["entrypoint"] == "flows/recipe_flow.py:run_recipe"
        assert spec["schedules"][0]["cron"].count(" ") == 4
        assert (ROOT / spec["parameters"]["recipe"]).is_file()


def test_serve_builds_deployments_with_schedules():
    from flows.deployments import build_deployments

    deps = build_deployments()
    assert len(deps) == len(yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"])
    for d in deps:
        assert d.schedules and d.schedules[0].schedule.cron
        assert d.concurrency_limit == 1
        assert Path(d.parameters["recipe"]).is_file()


def test_prefect_deploy_registers_them(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SYNTHFLOW_REPO": str(ROOT)}
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run(
        [*prefect, "work-pool", "create", "synthflow-local", "--type", "process"],
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    p = subprocess.run(
        [*prefect, "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    with get_client(sync_client=True) as client:
        for spec in specs:
            dep = client.read_deployment_by_name(f"synthflow-recipe/{spec['name']}")
            assert dep.parameters["recipe"] == spec["parameters"]["recipe"]
            crons = [s.schedule.cron for s in dep.schedules]
            assert crons == [spec["schedules"][0]["cron"]]
            # one run of a recipe at a time (runs are safe to overlap, but share one machine)
            assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
