"""Engine share of a run's wall time, sequential against pipelined, on the embedded model.

Two `synthflow run recipes/math.yaml` (or ``--recipe NAME``) through the CLI, as a user runs it, one after the other in
this one bench run: ``--set pipeline=false`` (generate batch k+1 only after batch k was verified,
deduped and scored) and the default pipelined run (batch k+1 is generated while batch k is
checked). Each gets its own empty response cache and output folder, so both generate everything.
From each run's summary.json: ``timing.engine_busy_s / (timing.wall_s - timing.engine_ready_s)``,
the share of the time after the engine was ready during which at least one engine request was in
flight (generation and the IFD scorer's prompt logprobs). Target: pipelined share >= 0.9.

    .venv/bin/python bench/pipeline_overlap.py [--recipe math] [--max-items 256] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.9


def exe() -> str:
    local = Path(sys.executable).parent / "synthflow"
    return str(local) if local.exists() else "synthflow"


def one(label: str, extra: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / label
    env = {
        **os.environ,
        "SYNTHFLOW_RESPONSE_CACHE": str(tmp / f"{label}.sqlite3"),
        "SYNTHFLOW_PROGRESS": "0",
        "PREFECT_HOME": str(tmp / f"prefect-{label}"),
    }
    cmd = [
        exe(),
        "run",
        str(ROOT / "recipes" / f"{args.recipe}.yaml"),
        "--out",
        str(out),
        "--n",
        "100000",  # never reached: every run makes its whole budget, the same work both ways
        "--max-items",
        str(args.max_items),
        "--batch-size",
        str(args.batch_size),
        *extra,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{label}: exit {p.returncode}\n{p.stderr[-3000:]}")
    s = json.loads(next(out.glob(f"{args.recipe}/*/summary.json")).read_text())
    t = s["timing"]
    after = t["wall_s"] - t["engine_ready_s"]
    row = {
        "run": label,
        "cli_wall_s": round(wall, 1),
        "wall_s": t["wall_s"],
        "engine_ready_s": t["engine_ready_s"],
        "engine_busy_s": t["engine_busy_s"],
        "share": round(t["engine_busy_s"] / after, 3),
        "items": s["items_planned"],
        "accepted": s["counts"]["accepted"],
        "stage_seconds": s["stage_seconds"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="math", help="a recipe under recipes/ (default math)")
    ap.add_argument("--max-items", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    print(
        f"{args.recipe} recipe, embedded model, {args.max_items} items in batches of {args.batch_size}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sf-pipeline-") as d:
        tmp = Path(d)
        seq = one("sequential", ["--set", "pipeline=false"], args, tmp)
        pip = one("pipelined", [], args, tmp)
    print(
        f"engine share after start: sequential {seq['share']:.3f} | pipelined {pip['share']:.3f} "
        f"(target >= {TARGET}) | wall after start {seq['wall_s'] - seq['engine_ready_s']:.1f} s -> "
        f"{pip['wall_s'] - pip['engine_ready_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
