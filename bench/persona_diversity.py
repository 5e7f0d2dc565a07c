"""Diversity from personas, on one budget: PAL math without and with personas, on the embedded model.

Two `synthflow run` through the CLI, as a user runs them, one after the other in this one bench
run: `recipes/math.yaml` (no personas) and `recipes/persona_math.yaml` (each item draws one of the
300 shipped personas). Both have the same seeds, few-shot examples, sampling, engine seed and
generation budget (``--max-items``; ``--n`` is never reached, so each run makes its whole budget);
self-consistency is off in both (it adds solver calls, not problems). Each gets its own empty
response cache and output folder.

Measured over the generated problems that got past parsing (published rows and rejects after the
parse stage), cut to the same number of rows for both runs (the first K by item index, K the
smaller count), so distinct-n is not skewed by corpus size:
- distinct-1/2/3 (Li et al., 2016): distinct word n-grams over all n-grams;
- openers: distinct first-four-word openings over rows.
distinct-n falls as texts get longer, so it also prints distinct-1/2/3 over the same number of
words from each run (the problems in item order, the last one cut: length-controlled), and the
mean words per problem. It prints each figure for both runs and the ratio persona / baseline
(> 1: more diverse).

    .venv/bin/python bench/persona_diversity.py [--max-items 128] [--batch-size 64]
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
sys.path.insert(0, str(ROOT))

from synthflow.personas import distinct_n  # noqa: E402
from synthflow.text import words  # noqa: E402


def exe() -> str:
    local = Path(sys.executable).parent / "synthflow"
    return str(local) if local.exists() else "synthflow"


def one(recipe: str, args: argparse.Namespace, tmp: Path) -> tuple[dict, list[str]]:
    import duckdb

    out = tmp / recipe
    env = {
        **os.environ,
        "SYNTHFLOW_RESPONSE_CACHE": str(tmp / f"{recipe}.sqlite3"),
        "SYNTHFLOW_PROGRESS": "0",
        "PREFECT_HOME": str(tmp / f"prefect-{recipe}"),
    }
    cmd = [exe(), "run", str(ROOT / "recipes" / f"{recipe}.yaml"), "--out", str(out), "--n", "100000",
           "--max-items", str(args.max_items), "--batch-size", str(args.batch_size),
           "--set", "generator.options.self_consistency=0"]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{recipe}: exit {p.returncode}\n{p.stderr[-3000:]}")
    run_dir = next(out.glob(f"{recipe}/*/summary.json")).parent
    s = json.loads((run_dir / "summary.json").read_text())
    files = [str(f) for sub in ("data", "rejects") for f in sorted((run_dir / sub).glob("*.parquet"))]
    rel = duckdb.sql(f"SELECT * FROM read_parquet({files!r}, union_by_name=true)")
    where = "coalesce(reject_stage, '') <> 'parse'" if "reject_stage" in rel.columns else "true"
    texts = [
        t
        for (t,) in rel.filter(f"{where} AND problem IS NOT NULL AND trim(problem) <> ''")
        .order("item")
        .select("problem")
        .fetchall()
    ]
    info = {"recipe": recipe, "cli_wall_s": round(wall, 1), "items": s["items_planned"],
            "accepted": s["counts"]["accepted"], "parsed": len(texts), "summary_diversity": s["diversity"]}  # fmt: skip
    print(json.dumps(info), flush=True)
    return info, texts


def measures(texts: list[str]) -> dict[str, float | None]:
    openers = {" ".join(words(t)[:4]).lower() for t in texts}
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "openers": round(len(openers) / len(texts), 4) if texts else None,
    }


def first_words(texts: list[str], total: int) -> list[str]:
    """The problems in order until ``total`` words, the last one cut (a length-controlled sample)."""
    out, n = [], 0
    for t in texts:
        w = words(t)
        if n + len(w) >= total:
            out.append(" ".join(w[: total - n]))
            break
        out.append(" ".join(w))
        n += len(w)
    return out


def table(title: str, mb: dict, mp: dict) -> None:
    print(title)
    print(f"  {'measure':<11} {'no personas':>12} {'personas':>9} {'ratio':>7}")
    for key in mb:
        b, p = mb[key], mp[key]
        ratio = f"{p / b:.3f}" if b and p is not None else "-"
        print(f"  {key:<11} {b:>12} {p:>9} {ratio:>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-items", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    print(f"PAL math, embedded model, {args.max_items} items each, batches of {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sf-persona-") as d:
        tmp = Path(d)
        _, base = one("math", args, tmp)
        _, pers = one("persona_math", args, tmp)
    k = min(len(base), len(pers))
    if k == 0:
        sys.exit("no parsed problems in one of the runs")
    base, pers = base[:k], pers[:k]
    lb, lp = sum(len(words(t)) for t in base), sum(len(words(t)) for t in pers)
    print(f"mean words per problem: no personas {lb / k:.1f}, personas {lp / k:.1f}")
    table(f"over the first {k} parsed problems of each run:", measures(base), measures(pers))
    w = min(lb, lp)
    cb, cp = first_words(base, w), first_words(pers, w)
    table(
        f"length-controlled, over the first {w} words of those problems in each run:",
        {f"distinct_{n}": distinct_n(cb, n) for n in (1, 2, 3)},
        {f"distinct_{n}": distinct_n(cp, n) for n in (1, 2, 3)},
    )


if __name__ == "__main__":
    main()
