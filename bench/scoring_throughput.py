"""Scoring throughput, end to end through the CLI: the distilled scorer against the label it replaces.

1. ``synthflow train-scorer`` on labelled rows: the shipped seed tasks' responses (good) and their
   truncated, looping or evasive twins (bad), the same construction as tests/labelled.py.
2. ``score_clf`` on one core (taskset to one CPU, BLAS/OpenMP threads 1), two ways:
   - in process: ``SklearnScorer`` over Records (the score step of a run);
   - the CLI end to end: ``synthflow score rows.parquet --scorer sklearn:DIR --out`` (start-up,
     Parquet in and out included).
   Rows: a 20-40 word instruction and a 150-word response. Target: >= 20,000 rows/s.
3. ``score_ifd`` through the CLI on the embedded model (both cores, vLLM on the CPU), the expensive
   label: rows/s with and without the model start-up.
Prints each figure and the ratios clf/target and clf/IFD.

    .venv/bin/python bench/scoring_throughput.py [--rows 100000] [--ifd-rows 200]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 20_000


def exe() -> str:
    local = Path(sys.executable).parent / "synthflow"
    return str(local) if local.exists() else "synthflow"


def cli(*args: str, one_core: bool = False) -> tuple[float, str]:
    cmd = [exe(), *args]
    if one_core:
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "SYNTHFLOW_PROGRESS": "0"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt, p.stdout


def rows_150(n: int, vocab: list[str], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        instr = " ".join(rng.choice(vocab) for _ in range(rng.randint(20, 40))) + "?"
        resp = " ".join(rng.choice(vocab) for _ in range(150)) + "."
        out.append({"id": f"r{i}", "instruction": instr, "response": resp})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--ifd-rows", type=int, default=200)
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthflow.seeds import BUILTIN_DIR
    from tests.labelled import labelled_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labelled = labelled_rows(BUILTIN_DIR / "self_instruct_seeds.jsonl")
        shared = ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
        if shared.is_file():
            labelled += labelled_rows(shared, seed=1)
        lab = tmp / "labelled.jsonl"
        lab.write_text("".join(json.dumps(r) + "\n" for r in labelled))
        fields = ["--instruction-field", "instruction", "--response-field", "response"]
        dt, out = cli("train-scorer", str(lab), "--label-field", "good", *fields, "--out", str(tmp / "m"))
        print(f"train-scorer on {len(labelled)} rows: {dt:.1f} s; {out.splitlines()[1]}")

        vocab = " ".join(r["instruction"] + " " + r["response"] for r in labelled).split()
        rows = rows_150(a.rows, vocab)
        data = tmp / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), data)

        # in process, one core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from filters.clf import SklearnScorer
        from synthflow.rescore import to_records
        from synthflow.scoring import ScoreContext

        recs = to_records(pa.Table.from_pylist(rows), "instruction", "response")
        scorer = SklearnScorer({"model": str(tmp / "m")}, ScoreContext())
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            scorer(recs)
            best = max(best, len(recs) / (time.perf_counter() - t0))
        print(
            json.dumps({"path": "score_clf in process, 1 core", "rows": len(recs), "rows_per_s": round(best)})
        )

        times = []
        for _ in range(3):  # best of 3: the first run also warms the page cache
            dt, _ = cli("score", str(data), "--scorer", f"sklearn:{tmp / 'm'}", *fields, "--out", str(tmp / "s"), one_core=True)  # fmt: skip
            times.append(round(dt, 2))
        clf_cli = a.rows / min(times)
        print(json.dumps({"path": "synthflow score --scorer sklearn (CLI, 1 core, best of 3)", "rows": a.rows, "seconds": times, "rows_per_s": round(clf_cli)}))  # fmt: skip

        # IFD on the embedded model: the expensive label, both cores
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        pairs = tmp / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(r) + "\n" for r in labelled[: a.ifd_rows]))
        env_cache = tmp / "responses.sqlite3"
        os.environ["SYNTHFLOW_RESPONSE_CACHE"] = str(env_cache)
        dt, out = cli("score", str(pairs), "--scorer", "ifd", *fields, "--out", str(tmp / "i"))
        engine_s = float(out.split("completion tokens; ")[1].split(" s")[0])
        n = min(a.ifd_rows, len(labelled))
        ifd = {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt, 2), "engine_seconds": engine_s,
               "rows_per_engine_s": round(n / engine_s, 2)}  # fmt: skip
        print(json.dumps({"path": "synthflow score --scorer ifd (CLI, embedded model, 2 cores)", **ifd}))

    print(
        f"score_clf: {round(best):,} rows/s in process, {round(clf_cli):,} rows/s through the CLI (1 core) "
        f"-> {best / TARGET:.2f}x / {clf_cli / TARGET:.2f}x the {TARGET:,} rows/s target; "
        f"IFD {ifd['rows_per_s']} rows/s end to end ({ifd['rows_per_engine_s']} per engine second) "
        f"-> clf is {best / ifd['rows_per_engine_s']:,.0f}x faster than the label it replaces"
    )


if __name__ == "__main__":
    main()
