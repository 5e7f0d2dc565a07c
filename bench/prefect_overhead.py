"""Prefect's overhead on a run: the recipe flow against a raw loop over the same stage functions.

A 10k-item math run on the scripted fake engine (tests/data/fake_math.json less its infinite
loop: the engine costs nothing, so everything else shows): sandboxed verification of every parsed program, exact and
near dedup, heuristic scores, thresholds, publishing. Three ways, in this one process, alternating
(raw, flow, pipelined flow, repeated), each with a fresh output root and response cache:

- raw loop: ``Run.open`` and the same stage calls (``Run.generate / apply / accept / finish``),
  no Prefect;
- the ``synthflow-recipe`` flow with ``pipeline: false`` (the same order of work, plus a Prefect
  task run per stage and batch);
- the flow as shipped (pipelined).

The ephemeral Prefect server is started by a warm-up flow before timing (its start, 6-13 s on a
fresh PREFECT_HOME, is paid once per process; it is printed apart). Target: flow/raw <= 1.02.

    .venv/bin/python bench/prefect_overhead.py [--items 10000] [--batch-size 250] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SYNTHFLOW_PROGRESS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def write_recipe(tmp: Path, items: int, batch: int) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "recipes" / "math.yaml").read_text())
    # the test script without its infinite loop: a timeout would make the work depend on load
    rules = json.loads((ROOT / "tests" / "data" / "fake_math.json").read_text())
    script = tmp / "fake_math.json"
    script.write_text(json.dumps([r for r in rules if "while True" not in r["reply"]]))
    data["engine"] = {"name": "fake", "options": {"script": str(script)}}
    data["generator"]["options"]["self_consistency"] = 0
    data["scoring"] = {"heuristics": {}}
    data["n"], data["max_items"], data["batch_size"] = 10**7, items, batch  # n never reached
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def raw_loop(recipe: Path, out: Path) -> dict:
    """The same batch loop as the flow, called directly: no Prefect."""
    from synthflow.run import run_plain
    from synthflow.spec import Overrides

    return run_plain(str(recipe), Overrides(out=str(out)))


def flow(recipe: Path, out: Path, pipeline: bool) -> dict:
    from flows.recipe_flow import run_recipe
    from synthflow.spec import Overrides

    return run_recipe(
        recipe=str(recipe), overrides=Overrides(out=str(out), sets=[f"pipeline={str(pipeline).lower()}"])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sf-prefect-") as d:
        tmp = Path(d)
        os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
        recipe = write_recipe(tmp, args.items, args.batch_size)
        (tmp / "warm").mkdir()
        small = write_recipe(tmp / "warm", 16, 16)
        t0 = time.perf_counter()
        os.environ["SYNTHFLOW_RESPONSE_CACHE"] = str(tmp / "warm.sqlite3")
        flow(small, tmp / "warm-out", pipeline=False)
        print(f"warm-up flow (ephemeral Prefect server start included): {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"raw loop": [], "flow (pipeline off)": [], "flow (pipelined)": []}
        counts = {}
        for rep in range(args.repeat):
            for label in times:
                os.environ["SYNTHFLOW_RESPONSE_CACHE"] = str(
                    tmp / f"{rep}-{label[:4]}-{len(times[label])}.sqlite3"
                )
                out = tmp / f"out-{rep}-{label.split()[0]}-{label[-4:-1]}"
                t0 = time.perf_counter()
                if label == "raw loop":
                    s = raw_loop(recipe, out)
                else:
                    s = flow(recipe, out, pipeline=label == "flow (pipelined)")
                sec = time.perf_counter() - t0
                times[label].append(sec)
                counts[label] = s["counts"]
                print(
                    json.dumps({"round": rep, "path": label, "seconds": round(sec, 2), "counts": s["counts"]})
                )
    if len({json.dumps(c, sort_keys=True) for c in counts.values()}) != 1:
        sys.exit(f"the paths disagree on the funnel: {counts}")
    med = {k: statistics.median(v) for k, v in times.items()}
    raw = med["raw loop"]
    print(
        f"{args.items} items in batches of {args.batch_size} (median of {args.repeat}): "
        f"raw loop {raw:.2f} s | flow {med['flow (pipeline off)']:.2f} s "
        f"(ratio {med['flow (pipeline off)'] / raw:.3f}, target <= 1.02) | "
        f"pipelined flow {med['flow (pipelined)']:.2f} s (ratio {med['flow (pipelined)'] / raw:.3f})"
    )


if __name__ == "__main__":
    main()
