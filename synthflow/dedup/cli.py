"""``synthflow dedup`` and ``synthflow decontam`` over Parquet/JSONL files, outside any recipe."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synthflow.atomic import atomic_path
from synthflow.dedup.decontam import NgramIndex, first_hits, load_benchmark, read_rows
from synthflow.errors import UserError, fraction, positive_int
from synthflow.rows import rows_table


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
        file_rows = read_rows(Path(path))
        if file_rows:
            rows_table(file_rows, path)  # one line for a column of mixed types, before any work
        for i, r in enumerate(file_rows):
            rows.append(r)
            texts.append(_text(r, field, f"{path} row {i + 1}"))
            keys.append(str(r.get("id") or f"{Path(path).name}:{i}"))
    if not rows:
        raise UserError("no input rows")
    return rows, texts, keys


def _write(out: Path, kept: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    for name, rows in (("kept.parquet", kept), ("rejects.parquet", rejects)):
        table = rows_table(rows, name) if rows else pa.table({"reject_reason": pa.array([], pa.string())})
        with atomic_path(out / name) as tmp:
            pq.write_table(table, tmp, compression="zstd")


def _texts_of(table: pa.Table, field: str | None, where: str) -> pa.Array | list[str]:
    """The text of each row: ``field`` (default ``messages``, else ``text``); a conversation is its
    turns' contents joined. A string column without nulls stays an Arrow array (hashed from its
    buffers, no Python strings)."""
    names = table.column_names
    if field is None:
        field = "messages" if "messages" in names else "text"
    if field not in names:
        raise UserError(f"{where}: no field {field!r} (fields: {', '.join(names[:12])})")
    col = table.column(field)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        arr = col.combine_chunks()
        return arr if not arr.null_count else [v if v is not None else "" for v in arr.to_pylist()]
    out = []
    for i, v in enumerate(col.to_pylist()):
        out.append(_text({field: v}, field, f"{where} row {i + 1}"))
    return out


def _load_table(inputs: list[str], field: str | None) -> tuple[pa.Table, pa.Array | list[str], list[str]]:
    """All inputs as one Arrow table (Parquet read as Arrow, JSONL through Python rows), the text
    of each row, and each row's key (its ``id``, else ``file:row``)."""
    tables, parts, keys = [], [], []
    for path in inputs:
        p = Path(path)
        if p.suffix == ".parquet" and p.is_file():
            try:
                t = pq.ParquetFile(p).read()  # (read_table imports pyarrow.dataset and pandas: 0.5 s)
            except (pa.ArrowInvalid, OSError) as e:
                raise UserError(f"{path}: not a readable Parquet file ({e})") from None
        else:
            rows = read_rows(p)
            t = rows_table(rows, path) if rows else pa.table({})
        if t.num_rows == 0:
            continue
        parts.append(_texts_of(t, field, path))
        ids = t.column("id").to_pylist() if "id" in t.column_names else [None] * t.num_rows
        keys += [str(v) if v else f"{p.name}:{i}" for i, v in enumerate(ids)]
        tables.append(t)
    if not tables:
        raise UserError("no input rows")
    if len(parts) == 1:
        texts = parts[0]
    elif all(isinstance(x, pa.Array) and x.type == parts[0].type for x in parts):
        texts = pa.concat_arrays(parts)
    else:
        texts = [s for x in parts for s in (x.to_pylist() if isinstance(x, pa.Array) else x)]
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise UserError(f"inputs do not share a schema: {e}") from None
    return table, texts, keys


def _int64s(values: np.ndarray) -> pa.Array:
    """An Arrow int64 array over numpy memory (``pa.array`` on Python objects imports pandas)."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(v), [None, pa.py_buffer(v)])


def _strings(values: list[str]) -> pa.Array:
    data = [s.encode() for s in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )


def _write_tables(
    out: Path, table: pa.Table, kept: np.ndarray, rejected: np.ndarray, reasons: list[str]
) -> None:
    rej = table.take(_int64s(rejected)).append_column("reject_reason", _strings(reasons))
    for name, t in (("kept.parquet", table.take(_int64s(kept))), ("rejects.parquet", rej)):
        with atomic_path(out / name) as tmp:
            pq.write_table(t, tmp, compression="zstd")


def cmd_dedup(a: Any) -> int:
    """Exact (the same normalized words), then near-dup with the lean index, in chunks of rows: each
    chunk's words are hashed once for both its exact keys and its shingles."""
    from synthflow.dedup.lean import LeanIndex

    table, texts, keys = _load_table(a.inputs, a.field)
    t0 = time.perf_counter()
    idx = LeanIndex(a.threshold, a.num_perm, a.shingle)
    chunks = [(s, texts[s : s + CHUNK]) for s in range(0, len(texts), CHUNK)]
    if a.dask:
        results = dask_signatures(a.dask, [c for _, c in chunks], a.shingle, a.num_perm, idx.bands, idx.rows)
    else:
        results = (_signature_chunk(c, a.shingle, a.num_perm, idx.bands, idx.rows) for _, c in chunks)
    reasons: dict[int, str] = {}
    exact_rows = ExactRows()
    exact = 0
    for (start, _), (sigs, tkeys, bk) in zip(chunks, results, strict=True):
        owner = exact_rows.owners(tkeys, start)  # the first row with the same words, in input order
        dups = np.flatnonzero(owner != np.arange(start, start + len(owner)))
        for j, o in zip(dups.tolist(), owner[dups].tolist(), strict=True):
            reasons[start + j] = f"dedup:exact:{keys[o]}"
        exact += len(dups)
        survivors = np.flatnonzero(owner == np.arange(start, start + len(owner)))
        matches = idx.check_and_add_sigs(
            [keys[start + j] for j in survivors.tolist()], sigs[survivors], bk[survivors]
        )
        for j, m in zip(survivors.tolist(), matches, strict=True):
            if m is not None:
                reasons[start + j] = f"dedup:near:{m.key}:jaccard={m.jaccard:.2f}"
    dt = time.perf_counter() - t0
    removed = np.zeros(len(texts), dtype=bool)
    rejected = np.array(sorted(reasons), dtype=np.int64)
    removed[rejected] = True
    kept = np.flatnonzero(~removed)
    _write_tables(Path(a.out), table, kept, rejected, [reasons[i] for i in rejected.tolist()])
    print(
        f"{len(texts)} rows: {len(kept)} kept, {exact} exact duplicates, {len(rejected) - exact} near duplicates"
    )
    print(
        f"MinHash K={a.num_perm}, {a.shingle}-word shingles, threshold {a.threshold} (estimated Jaccard): "
        f"{idx.bands} bands x {idx.rows} rows; {dt:.2f} s"
    )
    if a.dask:
        print(f"signatures on dask ({a.dask})")
    print(f"wrote {a.out}/kept.parquet and {a.out}/rejects.parquet")
    return 0


class ExactRows:
    """Exact dedup across chunks, in numpy: each row's key is its word count and word-hash sum
    (``text_keys``); ``owners`` gives each row of a chunk the first row (global index) with its key."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)  # sorted
        self.rows = np.zeros(0, dtype=np.int64)

    def owners(self, tkeys: np.ndarray, start: int) -> np.ndarray:
        from synthflow.dedup.minhash import _splitmix

        kk = tkeys[:, 1] ^ _splitmix(tkeys[:, 0].astype(np.uint64))  # one 64-bit key per row
        uniq, first, inv = np.unique(kk, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.keys, uniq)
        hit = pos < self.keys.size
        hit[hit] = self.keys[pos[hit]] == uniq[hit]
        owner_u = start + first
        if self.rows.size:
            owner_u = np.where(hit, self.rows[np.minimum(pos, self.rows.size - 1)], owner_u)
        new_keys, new_rows = uniq[~hit], start + first[~hit]
        allk = np.concatenate([self.keys, new_keys])
        order = np.argsort(allk, kind="stable")
        self.keys, self.rows = allk[order], np.concatenate([self.rows, new_rows])[order]
        return owner_u[inv.ravel()]


CHUNK = 20_000  # rows hashed and indexed at a time (bounded memory; the index decides in order)


def _signature_chunk(
    texts: pa.Array | list[str], k: int, num_perm: int, bands: int, rows: int
) -> tuple[Any, Any, Any]:
    """MinHash signatures, exact-dedup keys (words hashed once for both) and LSH band keys of raw
    texts: everything per row; the index then decides in row order in one process."""
    from synthflow.dedup.lean import band_keys
    from synthflow.dedup.minhash import MinHasher, shingle_and_keys

    sh, tkeys = shingle_and_keys(texts, k)
    sigs = MinHasher(num_perm).signatures(sh)
    return sigs, tkeys, band_keys(sigs, bands, rows)


def dask_signatures(
    address: str, chunks: list[list[str]], k: int, num_perm: int, bands: int, rows: int
) -> list[tuple[Any, Any, Any]]:
    """``_signature_chunk`` of every chunk on a Dask cluster, in input order."""
    from synthflow.daskrun import map_chunks

    return map_chunks(address, _signature_chunk, chunks, k=k, num_perm=num_perm, bands=bands, rows=rows)


def cmd_decontam(a: Any) -> int:
    rows, texts, _ = _load(a.inputs, a.field)
    against = [b.strip() for spec in (a.against or ["humaneval"]) for b in spec.split(",") if b.strip()]
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
    d.add_argument("--threshold", type=fraction, default=0.8, help="Jaccard threshold (default 0.8)")
    d.add_argument("--field", help="text field (default: messages if present, else text)")
    d.add_argument("--num-perm", type=positive_int, default=128)
    d.add_argument("--shingle", type=positive_int, default=5, help="words per shingle")
    d.add_argument(
        "--dask",
        metavar="ADDRESS|local:N",
        help="compute the MinHash signatures on a Dask cluster (a scheduler address, or local:N for N "
        "local worker processes); the index decides on this machine, so the kept set is the same",
    )
    d.set_defaults(fn=cmd_dedup)

    c = sub.add_parser("decontam", help="drop rows sharing n-grams with benchmark test sets")
    c.add_argument("inputs", nargs="+", help="Parquet or JSONL files")
    c.add_argument(
        "--against",
        action="append",
        help="built-in sets: gsm8k (GSM8K test), math500 (MATH-500), humaneval, mbpp, ifeval (the IFEval "
        "prompts), comma-separated or repeated; or file.jsonl:field[:id] | hf:name:split:field[:id] "
        "(default: humaneval)",
    )
    c.add_argument("--out", required=True)
    c.add_argument("--field", help="text field (default: messages if present, else text)")
    c.add_argument("--ngram", type=positive_int, default=13)
    c.add_argument(
        "--short-ngram", type=positive_int, default=7, help="n for benchmark items shorter than 2*ngram words"
    )
    c.add_argument(
        "--coverage",
        type=fraction,
        default=0.85,
        help="flag a row containing this share of a benchmark task statement's words, in order (default 0.85)",
    )
    c.set_defaults(fn=cmd_decontam)
