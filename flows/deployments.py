"""Deployments from ``prefect.yaml`` (the one place schedules live), served with ``flow.serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flows.recipe_flow import run_recipe

ROOT = Path(__file__).resolve().parents[1]


def deployment_specs(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["deployments"]


def select_specs(
    recipes: list[str] | None = None, path: Path = ROOT / "prefect.yaml"
) -> list[dict[str, Any]]:
    """The deployment specs to serve: all, or those named by deployment name, recipe name or recipe
    path. A name that matches none, or a deployment whose recipe does not load, is one error."""
    from synthflow.errors import UserError
    from synthflow.recipe import load_recipe
    from synthflow.registry import did_you_mean

    specs = deployment_specs(path)
    keys = {}
    for spec in specs:
        r = str((spec.get("parameters") or {}).get("recipe", ""))
        for k in (spec["name"], r, Path(r).stem, str(ROOT / r)):
            keys.setdefault(k, []).append(spec)
    chosen: list[dict[str, Any]] = []
    for name in recipes or []:
        # a deployment or recipe name as given first; a path then by where it points
        key = name if name in keys else (str(Path(name).resolve()) if Path(name).exists() else name)
        if key not in keys:
            names = sorted({Path(str(s["parameters"]["recipe"])).stem for s in specs})
            raise UserError(
                f"{path.name}: no deployment for {name!r} (serve takes a deployment or recipe name, or "
                f"a recipe path listed there); {did_you_mean(Path(name).stem, names)}"
            )
        chosen += [s for s in keys[key] if s not in chosen]
    chosen = chosen or specs
    for spec in chosen:
        load_recipe(ROOT / spec["parameters"]["recipe"])  # a broken recipe fails here, not at 3 a.m.
    return chosen


def build_deployments(recipes: list[str] | None = None) -> list[Any]:
    """``run_recipe.to_deployment`` for every spec (or those whose recipe is listed)."""
    out = []
    for spec in select_specs(recipes):
        params = dict(spec.get("parameters") or {})
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

    deployments = build_deployments(recipes)
    names = ", ".join(d.name for d in deployments)
    print(f"serving {len(deployments)} deployment(s) from prefect.yaml: {names} (Ctrl-C stops)", flush=True)
    serve(*deployments)
