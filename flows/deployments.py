"""Deployments from ``prefect.yaml`` (the one place schedules live), served with ``flow.serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flows.recipe_flow import run_recipe

ROOT = Path(__file__).resolve().parents[1]


def deployment_specs(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["deployments"]


def build_deployments(recipes: list[str] | None = None) -> list[Any]:
    """``run_recipe.to_deployment`` for every spec (or those whose recipe is listed)."""
    out = []
    for spec in deployment_specs():
        params = dict(spec.get("parameters") or {})
        if (
            recipes
            and params.get("recipe") not in recipes
            and Path(params.get("recipe", "")).stem not in recipes
        ):
            continue
        params["recipe"] = str(ROOT / params["recipe"])
        crons = [s["cron"] for s in spec.get("schedules") or []]
        out.append(
            run_recipe.to_deployment(
                name=spec["name"],
                parameters=params,
                cron=crons[0] if crons else None,
                concurrency_limit=spec.get("concurrency_limit"),
            )
        )
    return out


def serve_all(recipes: list[str] | None = None) -> None:
    from prefect import serve

    serve(*build_deployments(recipes))
