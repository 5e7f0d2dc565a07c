"""MinHash throughput, end to end (normalize + shingle + signature), on one core.

Three implementations over the same 20k documents of about 200 words, with the same K=128
permutations and the same 5-word shingles of the same normalized text:
  - ours: synthflow.dedup.minhash (numpy, whole batch at once);
  - datasketch: MinHash(num_perm=128).update_batch(shingles) per document;
  - rensa: RMinHash(num_perm=128).update(shingles) per document (Rust).
Targets: >= 4x datasketch, >= rensa. Then the near-dup indexes at 100k and 1M rows: time, and
memory per row (RSS growth), to show linear growth: the flow's ``NearDupIndex`` (signatures +
datasketch LSH + shingle sets for exact confirmation) and the lean index of ``synthflow dedup``
(numpy band keys + signatures; target <= 1 KB per row).

    .venv/bin/python bench/minhash_throughput.py [--docs 20000] [--scale 100000,1000000]
        [--index datasketch,lean] [--skip-signatures]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from synthflow.dedup.index import NearDupIndex  # noqa: E402
from synthflow.dedup.minhash import MinHasher, shingle  # noqa: E402
from synthflow.text import normalize  # noqa: E402

K, SHINGLE = 128, 5


def corpus(n: int, words: int = 200, seed: int = 0) -> list[str]:
    """Zipf-distributed words over a 30k vocabulary, with punctuation and capitals."""
    rng = np.random.default_rng(seed)
    vocab = np.array(
        ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 7)) for i in range(30000)]
    )
    ranks = np.minimum(rng.zipf(1.2, size=n * words), 30000) - 1
    toks = vocab[ranks].reshape(n, words)
    out = []
    for i, row in enumerate(toks):
        row = list(row)
        row[0] = row[0].capitalize()
        if i % 3 == 0:
            row[len(row) // 2] += ","
        out.append(" ".join(row) + ".")
    return out


def str_shingles(text: str) -> list[str]:
    w = normalize(text).split()
    if len(w) < SHINGLE:
        return [" ".join(w)] if w else []
    return [" ".join(w[i : i + SHINGLE]) for i in range(len(w) - SHINGLE + 1)]


def run_ours(docs: list[str], batch: int = 5000) -> np.ndarray:
    mh = MinHasher(K)
    out = [mh.signatures(shingle(docs[i : i + batch], SHINGLE)) for i in range(0, len(docs), batch)]
    return np.concatenate(out)


def run_datasketch(docs: list[str]) -> None:
    from datasketch import MinHash

    for d in docs:
        m = MinHash(num_perm=K)
        m.update_batch([s.encode("utf-8") for s in str_shingles(d)])


def run_rensa(docs: list[str]) -> None:
    from rensa import RMinHash

    for d in docs:
        m = RMinHash(num_perm=K, seed=1)
        m.update(str_shingles(d))
        m.digest()


def timed(fn, docs) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn(docs)
    return len(docs) / (time.perf_counter() - t0)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def scale(n: int, chunk: int = 20000, kind: str = "datasketch") -> dict:
    """Stream n synthetic rows through a near-dup index batch by batch: ``datasketch`` (the flow's
    ``NearDupIndex``: MinHashLSH plus exact shingle sets) or ``lean`` (``synthflow dedup``'s)."""
    from synthflow.dedup.lean import LeanIndex

    gc.collect()
    base = rss()
    idx = NearDupIndex(0.8, K, SHINGLE) if kind == "datasketch" else LeanIndex(0.8, K, SHINGLE)
    dt = 0.0
    for start in range(0, n, chunk):
        docs = corpus(min(chunk, n - start), seed=1000 + start)  # made outside the timed part
        keys = [f"r{start + i}" for i in range(len(docs))]
        t0 = time.perf_counter()
        idx.check_and_add(keys, docs)
        dt += time.perf_counter() - t0
        del docs, keys
    gc.collect()
    used = rss() - base
    return {
        "index": kind,
        "rows": n,
        "seconds": round(dt, 1),
        "rows_per_s": round(n / dt),
        "index_mb": round(used / 2**20),
        "bytes_per_row": round(used / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument(
        "--scale", default="100000,1000000", help="comma-separated row counts for the index run ('' skips)"
    )
    ap.add_argument("--core", type=int, default=0, help="the one core to run on")
    ap.add_argument("--index", default="datasketch,lean", help="index kinds for the scale run")
    ap.add_argument("--skip-signatures", action="store_true", help="only the index run")
    a = ap.parse_args()
    os.sched_setaffinity(0, {a.core})
    docs = corpus(a.docs)
    words = np.mean([len(d.split()) for d in docs[:1000]])
    print(
        f"{len(docs)} documents, {words:.0f} words each on average, K={K}, {SHINGLE}-word shingles, one core"
    )
    if not a.skip_signatures:
        run_ours(docs[:500])  # warm up
        ours = timed(run_ours, docs)
        ds = timed(run_datasketch, docs)
        rs = timed(run_rensa, docs)
        print(
            json.dumps(
                {"ours_docs_s": round(ours), "datasketch_docs_s": round(ds), "rensa_docs_s": round(rs)}
            )
        )
        print(f"ours {ours:.0f} docs/s | datasketch {ds:.0f} docs/s | rensa {rs:.0f} docs/s")
        print(
            f"ratio vs datasketch: {ours / ds:.2f}x (target >= 4x); ratio vs rensa: {ours / rs:.2f}x (target >= 1x)"
        )
    for kind in [k.strip() for k in a.index.split(",") if k.strip()]:
        for n in [int(x) for x in a.scale.split(",") if x.strip()]:
            print(json.dumps({"index": scale(n, kind=kind)}), flush=True)


if __name__ == "__main__":
    main()
