"""``synthflow dedup`` and ``synthflow decontam`` over Parquet/JSONL files, outside any recipe."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthflow.atomic import atomic_path
from synthflow.dedup.decontam import NgramIndex, first_hits, load_benchmark, read_rows
from synthflow.dedup.index import NearDupIndex
from synthflow.errors import UserError
from synthflow.text import exact_key


def _text(row: dict[str, Any], field: str | None, where: str) -> str:
    if field is None:
        field = "messages" if "messages" in row else "text"
    if field not in row:
        raise UserError(f"{where}: no field {field!r} (fields: {', '.join(list(row)[:12])})")
    v = row[field]
    if field == "messages" and isinstance(v, list):
        return "\n".join(str(m.get("content", "")) for m in v)
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _load(inputs: list[str], field: str | None) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    rows, texts, keys = [], [], []
    for path in inputs:
        for i, r in enumerate(read_rows(Path(path))):
            rows.append(r)
            texts.append(_text(r, field, f"{path} row {i + 1}"))
            keys.append(str(r.get("id") or f"{Path(path).name}:{i}"))
    if not rows:
        raise UserError("no input rows")
    return rows, texts, keys


def _write(out: Path, kept: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    for name, rows in (("kept.parquet", kept), ("rejects.parquet", rejects)):
        table = pa.Table.from_pylist(rows) if rows else pa.table({"reject_reason": pa.array([], pa.string())})
        with atomic_path(out / name) as tmp:
            pq.write_table(table, tmp, compression="zstd")


def cmd_dedup(a: Any) -> int:
    rows, texts, keys = _load(a.inputs, a.field)
    t0 = time.perf_counter()
    kept, rejects = [], []
    seen: dict[str, str] = {}
    survivors = []
    for r, t, k in zip(rows, texts, keys, strict=True):
        ek = exact_key(t)
        if ek in seen:
            rejects.append({**r, "reject_reason": f"dedup:exact:{seen[ek]}"})
        else:
            seen[ek] = k
            survivors.append((r, t, k))
    idx = NearDupIndex(a.threshold, a.num_perm, a.shingle)
    for i in range(0, len(survivors), 10_000):
        chunk = survivors[i : i + 10_000]
        for (r, _, _), m in zip(
            chunk, idx.check_and_add([k for _, _, k in chunk], [t for _, t, _ in chunk]), strict=True
        ):
            if m is None:
                kept.append(r)
            else:
                rejects.append({**r, "reject_reason": f"dedup:near:{m.key}:jaccard={m.jaccard:.2f}"})
    dt = time.perf_counter() - t0
    _write(Path(a.out), kept, rejects)
    exact = sum(1 for r in rejects if r["reject_reason"].startswith("dedup:exact"))
    print(
        f"{len(rows)} rows: {len(kept)} kept, {exact} exact duplicates, {len(rejects) - exact} near duplicates"
    )
    print(
        f"MinHash K={a.num_perm}, {a.shingle}-word shingles, threshold {a.threshold}: {idx.bands} bands x {idx.rows} rows; {dt:.2f} s"
    )
    print(f"wrote {a.out}/kept.parquet and {a.out}/rejects.parquet")
    return 0


def cmd_decontam(a: Any) -> int:
    rows, texts, _ = _load(a.inputs, a.field)
    against = a.against or ["humaneval"]
    indexes = [NgramIndex(load_benchmark(b), a.ngram, a.short_ngram, a.coverage) for b in against]
    kept, rejects = [], []
    hits = first_hits(indexes, texts)
    for r, h in zip(rows, hits, strict=True):
        if h is None:
            kept.append(r)
        else:
            rejects.append({**r, "reject_reason": f"contaminated:{h[0]}:{h[1]}:{h[2]}"})
    _write(Path(a.out), kept, rejects)
    per = {idx.name: sum(1 for h in hits if h and h[0] == idx.name) for idx in indexes}
    print(
        f"{len(rows)} rows: {len(kept)} kept, {len(rejects)} contaminated ({', '.join(f'{k}: {v}' for k, v in per.items())})"
    )
    print(
        f"{a.ngram}-grams ({a.short_ngram}-grams for benchmark items under {2 * a.ngram} words); wrote {a.out}/"
    )
    return 0


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("dedup", help="exact + MinHash LSH near-duplicate removal over Parquet/JSONL files")
    d.add_argument("inputs", nargs="+", help="Parquet or JSONL files")
    d.add_argument("--out", required=True, help="folder for kept.parquet and rejects.parquet")
    d.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold (default 0.8)")
    d.add_argument("--field", help="text field (default: messages if present, else text)")
    d.add_argument("--num-perm", type=int, default=128)
    d.add_argument("--shingle", type=int, default=5, help="words per shingle")
    d.set_defaults(fn=cmd_dedup)

    c = sub.add_parser("decontam", help="drop rows sharing n-grams with benchmark test sets")
    c.add_argument("inputs", nargs="+", help="Parquet or JSONL files")
    c.add_argument(
        "--against",
        action="append",
        help="humaneval | file.jsonl:field[:id] | hf:name:split:field[:id] (repeatable)",
    )
    c.add_argument("--out", required=True)
    c.add_argument("--field", help="text field (default: messages if present, else text)")
    c.add_argument("--ngram", type=int, default=13)
    c.add_argument(
        "--short-ngram", type=int, default=7, help="n for benchmark items shorter than 2*ngram words"
    )
    c.add_argument(
        "--coverage",
        type=float,
        default=0.85,
        help="flag a row containing this share of a benchmark task statement's words, in order (default 0.85)",
    )
    c.set_defaults(fn=cmd_decontam)
