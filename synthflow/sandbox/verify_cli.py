"""``synthflow verify``: check a verifier against data nobody here wrote (HumanEval format, or
plain ``{id, code, tests}`` rows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from synthflow.atomic import atomic_path
from synthflow.errors import UserError, positive_float, positive_int
from synthflow.rows import read_rows
from synthflow.sandbox.verdict import Job


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def jobs_from(
    rows: list[dict[str, Any]], fmt: str, completion_field: str | None, timeout_s: float, path: Path
) -> list[tuple[str, Job]]:
    out = []
    seen: dict[str, int] = {}
    key = "task_id" if fmt == "humaneval" else "id"
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise UserError(f"{path}: row {i}: not a JSON object")
        if key in r:
            rid = str(r[key])
            if rid in seen:
                raise UserError(
                    f"{path}: row {i}: duplicate {key} {rid!r} (first at row {seen[rid]}); ids must be unique"
                )
            seen[rid] = i
        if fmt == "humaneval":
            field = completion_field or ("completion" if "completion" in r else "canonical_solution")
            missing = [k for k in ("task_id", "prompt", "test", "entry_point", field) if k not in r]
            if missing:
                raise UserError(f"{path}: row {i}: missing field {missing[0]!r} (HumanEval format)")
            code = r["prompt"] + r[field]
            # the benchmark's tests and prompt are the user's data, not the model's: trusted
            job = Job(code=code, tests=r["test"], entry_point=r["entry_point"], timeout_s=timeout_s,
                      prompt=r["prompt"], tests_trusted=True)  # fmt: skip
            out.append((r["task_id"], job))
        else:
            missing = [k for k in ("id", "code", "tests") if k not in r]
            if missing:
                raise UserError(f"{path}: row {i}: missing field {missing[0]!r} (expects id, code, tests)")
            tests = r["tests"] if isinstance(r["tests"], str) else "\n".join(r["tests"])
            out.append(
                (
                    str(r["id"]),
                    Job(code=r["code"], tests=tests, entry_point=r.get("entry_point"), timeout_s=timeout_s),
                )
            )
    return out


def cmd_verify(a: Any) -> int:
    from synthflow.sandbox.forkserver import SandboxExecutor

    path = Path(a.file)
    rows = read_jsonl(path)
    jobs = jobs_from(rows, a.format, a.completion_field, a.timeout, path)
    key = "task_id" if a.format == "humaneval" else "id"  # verdicts keep the input's id key
    if a.dask:
        from synthflow.sandbox.dask_executor import DaskSandbox

        ex_cm: Any = DaskSandbox(a.dask, mode=a.sandbox, allow_weak=a.allow_weak_sandbox)
    else:
        ex_cm = SandboxExecutor(workers=a.workers, mode=a.sandbox, allow_weak=a.allow_weak_sandbox)
    with ex_cm as ex:
        verdicts = ex.run([j for _, j in jobs])
        mode, weak = ex.mode, ex.weak
    passed = sum(v.passed for v in verdicts)
    trusted = sum(v.trusted for v in verdicts)
    untrusted_passes = sum(v.passed and not v.trusted for v in verdicts)
    if a.out:
        with atomic_path(a.out) as tmp, open(tmp, "w") as f:
            for (tid, _), v in zip(jobs, verdicts, strict=True):
                d = v.as_dict()
                d.pop("extra", None)
                f.write(json.dumps({key: tid, **d}, default=repr) + "\n")
    note = "  WEAK SANDBOX (--allow-weak-sandbox)" if weak else ""
    split = (
        f" ({passed - untrusted_passes} trusted, {untrusted_passes} untrusted)" if untrusted_passes else ""
    )
    print(
        f"{passed} passed{split}, {len(verdicts) - passed} failed  (sandbox mode: {mode}; "
        f"{trusted} of {len(verdicts)} verdicts trusted){note}"
    )
    if a.show_failures:
        for (tid, _), v in zip(jobs, verdicts, strict=True):
            if not v.passed:
                print(f"  {tid}: {v.status} {v.exc_type} {v.message[:100]}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    v = sub.add_parser("verify", help="run programs and their tests in the sandbox; one verdict per row")
    v.add_argument("file", help="JSONL or .jsonl.gz")
    v.add_argument("--format", choices=["humaneval", "jsonl"], default="humaneval",
                   help="humaneval: task_id, prompt, canonical_solution|completion, test, entry_point; jsonl: id, code, tests")  # fmt: skip
    v.add_argument(
        "--completion-field",
        help="HumanEval field holding the completion (default: completion if present, else canonical_solution)",
    )
    v.add_argument("--out", help="write verdicts as JSONL here")
    v.add_argument("--timeout", type=positive_float, default=10.0, help="wall-clock seconds per program")
    v.add_argument("--workers", type=positive_int, help="fork servers (default: one per core)")
    v.add_argument("--sandbox", default="auto", help="isolation: auto, bwrap, unshare, fallback")
    v.add_argument(
        "--allow-weak-sandbox",
        action="store_true",
        help="run even where only a weak sandbox (unshare, fallback) works; the output says so",
    )
    v.add_argument(
        "--dask",
        metavar="ADDRESS|local:N",
        help="run the programs on a Dask cluster (scheduler address, or local:N worker processes); "
        "each worker runs its chunk in its own sandbox; same verdicts, in input order",
    )
    v.add_argument("--show-failures", action="store_true")
    v.set_defaults(fn=cmd_verify)
