"""`synthflow dedup` end to end against a plain datasketch MinHash + LSH script, on one core.

60,000 documents of about 200 words (Zipf words, as in bench/minhash_throughput.py): 48,000
originals and 12,000 planted near-duplicates (a copy of an earlier original with 1-3 words
replaced), shuffled, in one Parquet file. Both sides run as their own process pinned to one core
(`taskset -c 0`), start-up, reading and writing included:

- ours: `synthflow dedup docs.parquet --field text --out DIR` (exact on normalized text, then the
  lean MinHash LSH index, K=128, 5-word shingles, threshold 0.8);
- baseline: a script with the same steps done the usual way: the same normalization, exact
  dedup by hash, datasketch `MinHash(num_perm=128).update_batch` per document over the same
  5-word shingles, `MinHashLSH(threshold=0.8)` query-then-insert per document, kept rows written
  with pyarrow.

Prints both times, the ratio (target >= 8x), and the quality of each: planted duplicates
found, and originals removed (none should be). With ``--dask N`` it also runs
`synthflow dedup --dask local:N` (not pinned: N worker processes) and checks that it keeps the
same rows as the one-core run.

    .venv/bin/python bench/dedup_cli.py [--docs 60000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = r"""
import sys, hashlib
import pyarrow as pa, pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
from synthflow.text import normalize

src, out = sys.argv[1], sys.argv[2]
t = pq.read_table(src)
texts, ids = t.column("text").to_pylist(), t.column("id").to_pylist()
seen, lsh, kept = set(), MinHashLSH(threshold=0.8, num_perm=128), []
for i, (k, text) in enumerate(zip(ids, texts)):
    w = normalize(text).split()
    h = hashlib.sha1(" ".join(w).encode()).digest()
    if h in seen:
        continue
    seen.add(h)
    sh = [" ".join(w[j:j + 5]) for j in range(len(w) - 4)] or [" ".join(w)]
    m = MinHash(num_perm=128)
    m.update_batch([s.encode("utf-8") for s in sh])
    if lsh.query(m):
        continue
    lsh.insert(k, m)
    kept.append(i)
pq.write_table(t.take(pa.array(kept, pa.int64())), out, compression="zstd")
"""


def corpus(n: int) -> tuple[list[str], list[str], set[str]]:
    """Originals in order, each planted copy at a random place after its original."""
    from bench.minhash_throughput import corpus as zipf_docs

    n_dup = n // 5
    base = zipf_docs(n - n_dup, seed=11)
    rng = random.Random(11)
    timed = [(float(i), f"o{i}", d) for i, d in enumerate(base)]
    for j in range(n_dup):
        src = rng.randrange(len(base))
        w = base[src].split()
        for pos in rng.sample(range(len(w)), min(len(w), rng.randint(1, 3))):
            w[pos] = f"planted{rng.randrange(10**6)}"
        timed.append((rng.uniform(src + 0.5, len(base)), f"p{j}", " ".join(w)))
    timed.sort()
    return [k for _, k, _ in timed], [d for _, _, d in timed], {k for _, k, _ in timed if k.startswith("p")}


def pinned() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def exe() -> str:
    local = Path(sys.executable).parent / "synthflow"
    return str(local) if local.exists() else "synthflow"


def kept_ids(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def dedup_cmd(src: Path, out: Path) -> list[str]:
    """The user's command: ``synthflow dedup SRC --field text --out OUT``."""
    return [exe(), "dedup", str(src), "--field", "text", "--out", str(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=60_000)
    ap.add_argument("--dask", type=int, default=2, help="also time --dask local:N (0 skips)")
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys, docs, planted = corpus(args.docs)
    with tempfile.TemporaryDirectory(prefix="sf-dedup-") as d:
        tmp = Path(d)
        src = tmp / "docs.parquet"
        pq.write_table(pa.table({"id": keys, "text": docs}), src)
        script = tmp / "baseline.py"
        script.write_text(BASELINE)
        env_cmds = {
            "synthflow dedup": [*pinned(), *dedup_cmd(src, tmp / "ours")],
            "datasketch script": [
                *pinned(),
                sys.executable,
                str(script),
                str(src),
                str(tmp / "base.parquet"),
            ],
        }
        if args.dask:
            env_cmds["synthflow dedup --dask"] = [
                *dedup_cmd(src, tmp / "dask"),
                "--dask",
                f"local:{args.dask}",
            ]
        secs = {}
        for label, cmd in env_cmds.items():
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            secs[label] = time.perf_counter() - t0
            if p.returncode != 0:
                sys.exit(f"{label} failed: {p.stderr[-2000:]}")
        ours, base = kept_ids(tmp / "ours" / "kept.parquet"), kept_ids(tmp / "base.parquet")
        dask = kept_ids(tmp / "dask" / "kept.parquet") if args.dask else None
    originals = {k for k in keys if k.startswith("o")}
    for label, kept in (("synthflow dedup", ours), ("datasketch script", base)):
        print(
            json.dumps(
                {
                    "path": label,
                    "seconds": round(secs[label], 2),
                    "docs_s": round(len(keys) / secs[label]),
                    "kept": len(kept),
                    "planted_removed": len(planted - kept),
                    "planted": len(planted),
                    "originals_removed": len(originals - kept),
                }
            )
        )
    print(
        f"kept sets: {len(ours & base)} in both, {len(ours - base)} only ours, {len(base - ours)} only baseline"
    )
    if dask is not None:
        print(
            f"synthflow dedup --dask local:{args.dask}: {secs['synthflow dedup --dask']:.2f} s "
            f"({secs['synthflow dedup'] / secs['synthflow dedup --dask']:.2f}x the one-core run); "
            f"same kept set: {dask == ours}"
        )
    r = secs["datasketch script"] / secs["synthflow dedup"]
    print(
        f"{len(keys)} docs, one core, end to end: synthflow dedup {secs['synthflow dedup']:.2f} s | "
        f"datasketch script {secs['datasketch script']:.2f} s | ratio {r:.2f}x (target >= 8x)"
    )


if __name__ == "__main__":
    main()
