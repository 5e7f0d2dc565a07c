"""The lean near-dup index (``synthflow dedup``): planted pairs, order-exact decisions however the
rows are batched, and the bytes it keeps per row."""

from __future__ import annotations

import random

import numpy as np

from synthflow.dedup.lean import LeanIndex
from synthflow.dedup.minhash import MinHasher, shingle

from .test_dedup import pairs_with_truth  # noqa: F401 - the shared fixture


def test_planted_pairs_recall_and_no_low_jaccard_drops(pairs_with_truth):  # noqa: F811
    texts, truth = pairs_with_truth
    found = np.zeros(len(texts), bool)
    for i, (a, b) in enumerate(texts):
        idx = LeanIndex(threshold=0.8)
        ms = idx.check_and_add(["a", "b"], [a, b])  # one batch: the within-batch path
        found[i] = ms[1] is not None and ms[1].key == "a"
    assert found[truth >= 0.9].mean() >= 0.95, found[truth >= 0.9].mean()
    assert not found[truth < 0.5].any(), "a pair below Jaccard 0.5 was removed"
    # across batches: the original in one call, the variant in the next
    found2 = np.zeros(len(texts), bool)
    for i, (a, b) in enumerate(texts):
        idx = LeanIndex(threshold=0.8)
        idx.check_and_add(["a"], [a])
        found2[i] = idx.check_and_add(["b"], [b])[0] is not None
    assert (found == found2).all(), "the same decision within a batch and across batches"


def _corpus(n: int, seed: int = 3) -> tuple[list[str], list[str]]:
    """n documents: originals and, for a third of them, a lightly edited copy later on."""
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(5000)]
    docs: list[str] = []
    for _ in range(n):
        if docs and rng.random() < 0.35:
            w = rng.choice(docs).split()
            for pos in rng.sample(range(len(w)), min(len(w), rng.choice([0, 1, 3, 10, 40]))):
                w[pos] = rng.choice(vocab)
            docs.append(" ".join(w))
        else:
            docs.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 120))))
    return [f"d{i}" for i in range(n)], docs


def test_decisions_do_not_depend_on_batching():
    keys, docs = _corpus(1500)
    one = LeanIndex()
    whole = one.check_and_add(keys, docs)
    many = LeanIndex()
    parts = []
    for s in range(0, len(docs), 97):
        parts += many.check_and_add(keys[s : s + 97], docs[s : s + 97])
    assert [(m.key, round(m.jaccard, 6)) if m else None for m in whole] == [
        (m.key, round(m.jaccard, 6)) if m else None for m in parts
    ]
    assert 100 < sum(m is not None for m in whole) < 1000
    assert len(one) == len(many) == sum(m is None for m in whole)


def test_decisions_equal_a_brute_force_reference_on_found_candidates():
    """Every duplicate it reports is a kept earlier row at estimated Jaccard >= threshold, the most
    similar one among the rows LSH found; every row it keeps has no kept earlier row at >= 0.9."""
    keys, docs = _corpus(600, seed=5)
    idx = LeanIndex(threshold=0.8)
    ms = idx.check_and_add(keys, docs)
    sigs = MinHasher(128).signatures(shingle(docs, 5))
    kept: list[int] = []
    for i, m in enumerate(ms):
        est = (sigs[kept] == sigs[i]).mean(axis=1) if kept else np.zeros(0)
        if m is None:
            assert not (est >= 0.9).any(), i  # a clear duplicate is never missed here
            kept.append(i)
        else:
            j = keys.index(m.key)
            assert j in kept and j < i and m.jaccard >= 0.8
            assert abs(float((sigs[j] == sigs[i]).mean()) - m.jaccard) < 1e-9


def test_identical_texts_keep_the_first():
    idx = LeanIndex()
    ms = idx.check_and_add([f"k{i}" for i in range(200)], ["the same words again and again here"] * 200)
    assert ms[0] is None and all(m is not None and m.key == "k0" for m in ms[1:])
    assert len(idx) == 1


def test_bytes_per_row_are_small():
    keys, docs = _corpus(3000, seed=7)
    idx = LeanIndex()
    idx.check_and_add(keys, docs)
    per_row = idx.nbytes / len(idx)
    assert per_row <= 700, per_row  # 512 B signature + 9 bands x 12 B


def test_dedup_cli_with_dask_keeps_the_same_rows(tmp_path):
    """`synthflow dedup --dask local:2`: signatures on 2 Dask worker processes, the same kept set."""
    import json

    import pyarrow.parquet as pq

    from .conftest import run_cli

    keys, docs = _corpus(1200, seed=9)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": k, "text": d}) + "\n" for k, d in zip(keys, docs, strict=True)))
    kept = {}
    for label, extra in (("plain", []), ("dask", ["--dask", "local:2"])):
        p = run_cli(
            "dedup", str(data), "--field", "text", "--out", str(tmp_path / label), *extra, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        kept[label] = pq.read_table(tmp_path / label / "kept.parquet").column("id").to_pylist()
        rej = pq.read_table(tmp_path / label / "rejects.parquet").to_pylist()
        assert rej and all(r["reject_reason"].startswith("dedup:") for r in rej)
    assert kept["plain"] == kept["dask"] and 200 < len(kept["plain"]) < 1200
    bad = run_cli("dedup", str(data), "--out", str(tmp_path / "bad"), "--dask", "local:x")
    assert bad.returncode == 2 and "--dask local:x" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_dedup_cli_keeps_every_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .conftest import run_cli

    conv = [
        {"role": "user", "content": "Name three rivers in Europe please"},
        {"role": "assistant", "content": "Rhine, Danube, Loire."},
    ]
    other = [
        {"role": "user", "content": "What is the boiling point of water"},
        {"role": "assistant", "content": "100 C at sea level."},
    ]
    t = pa.table({"id": ["a", "b", "c"], "messages": [conv, conv, other], "score": [0.1, 0.2, 0.3]})
    pq.write_table(t, tmp_path / "in.parquet")
    p = run_cli("dedup", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr[-2000:]
    kept = pq.read_table(tmp_path / "o" / "kept.parquet")
    assert kept.column_names == ["id", "messages", "score"] and kept.column("id").to_pylist() == ["a", "c"]
    assert kept.schema.field("messages").type == t.schema.field("messages").type
    rej = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert [(r["id"], r["reject_reason"]) for r in rej] == [("b", "dedup:exact:a")]


def test_arrow_buffers_hash_like_python_strings():
    """`synthflow dedup` hashes an Arrow string column from its buffers; the shingles and exact
    keys must be those of the string path (the flow's, and the cross-run index's)."""
    import pyarrow as pa

    from synthflow.dedup.minhash import shingle_and_keys

    rng = random.Random(5)
    alpha = "abcXYZ019_ .,;:!?\n\t-'\"()"
    texts = ["".join(rng.choice(alpha) for _ in range(rng.randint(0, 80))) for _ in range(1500)]
    texts += ["", "   ", "Hello, World", "a", "ab cd ef gh ij kl", "é accent, not ASCII", "END"]
    for arr, ref in (
        (pa.array(texts, pa.string()), texts),
        (pa.array(texts, pa.large_string()), texts),
        (pa.array(texts, pa.string()).slice(7, 900), texts[7:907]),  # an offset slice
    ):
        s1, k1 = shingle_and_keys(ref, 5)
        s2, k2 = shingle_and_keys(arr, 5)
        assert np.array_equal(s1.hashes, s2.hashes) and np.array_equal(s1.offsets, s2.offsets)
        assert np.array_equal(k1, k2)
    # texts glued without a separator between them stay separate words
    s1, _ = shingle_and_keys(["ab", "cd"], 1)
    s2, _ = shingle_and_keys(pa.array(["ab", "cd"]), 1)
    assert np.array_equal(s1.hashes, s2.hashes) and s1.offsets.tolist() == [0, 1, 2]


def test_exact_rows_name_the_first_row_across_chunks():
    from synthflow.dedup.cli import ExactRows

    er = ExactRows()
    k = np.array([[3, 10], [3, 11], [3, 10], [4, 10]], dtype=np.uint64)  # (words, hash) per row
    assert er.owners(k, 0).tolist() == [0, 1, 0, 3]  # row 2 repeats row 0; (4, 10) differs
    k2 = np.array([[3, 11], [5, 7], [5, 7], [3, 10]], dtype=np.uint64)
    assert er.owners(k2, 4).tolist() == [1, 5, 5, 0]
