"""Vectorized MinHash: normalize -> word hashes -> k-word shingles -> K-permutation signatures,
in numpy over a whole batch at once (no per-document or per-shingle Python loop).

Hashing (``SCHEME``, stable across versions; the tag goes into every persisted index):
- text: NFKC, lower case, punctuation to spaces, whitespace collapsed (``synthflow.text.normalize``);
- word: polynomial hash of its UTF-8 bytes mod 2^64 (base ``P``), then a splitmix64 finalizer;
- shingle of k words: splitmix64(sum_i word_i * C_i mod 2^64) -> 64-bit shingle hash;
- permutation k of a shingle: ``(A_k * (h >> 32 ^ h) + B_k) mod 2^32`` (A_k odd: a bijection on
  32-bit values), A/B drawn from numpy's PCG64 with ``seed``; signature = per-document minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthflow.text import normalize

SCHEME = "sfmh-v1"
P = np.uint64(0x100000001B3)  # odd base for the byte polynomial
_INV_P = np.uint64(pow(int(P), -1, 2**64))
_MASK32 = np.uint64(0xFFFFFFFF)
EMPTY = np.uint32(0xFFFFFFFF)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_COEF = _splitmix(np.arange(1, 65, dtype=np.uint64)) | np.uint64(1)


@dataclass
class Shingled:
    """Shingle hashes of a batch: ``hashes[offsets[i]:offsets[i+1]]`` belong to document i."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = n_docs + 1

    def doc(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    def sets(self) -> list[np.ndarray]:
        """Sorted unique shingle hashes per document (for exact Jaccard)."""
        return [np.unique(self.doc(i)) for i in range(len(self.offsets) - 1)]


# Hashing only needs word boundaries, so ASCII text skips the whitespace collapse of normalize():
# lower case, punctuation and every whitespace character (newlines included) to spaces.
_ASCII_SEP = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}


def _for_hashing(text: str) -> str:
    return text.lower().translate(_ASCII_SEP) if text.isascii() else normalize(text)


_POW: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i (mod 2^64) for i < n, from a table grown on demand."""
    if _POW[0].size < n:
        size = max(n, 2 * _POW[0].size, 1 << 16)
        for k, base in enumerate((P, _INV_P)):
            t = np.full(size, base, np.uint64)
            t[0] = 1
            _POW[k] = np.cumprod(t, dtype=np.uint64)
    return _POW[0][:n], _POW[1][:n]


def word_hashes(texts: Sequence[str], normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word of every text, concatenated; and per-text word offsets."""
    norm = list(texts) if normalized else [_for_hashing(t) for t in texts]
    data = "\n".join(norm).encode("utf-8")
    n_docs = len(norm)
    if not data.strip():
        return np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64)
    b = np.frombuffer(data, dtype=np.uint8)
    n = b.size
    sep = (b == 32) | (b == 10)
    # polynomial prefix hash: H[i] = sum_{j<=i} b[j] * P^j  (mod 2^64, numpy wraps)
    pw, ipw = _powers(n)
    H = np.cumsum(b.astype(np.uint64) * pw, dtype=np.uint64)
    # word spans: runs of non-separators
    is_word = ~sep
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1  # inclusive
    before = np.where(starts > 0, H[np.maximum(starts - 1, 0)], np.uint64(0))
    # sum_{j in word} b[j] P^(j - start): P is odd, so P^-start exists mod 2^64
    wh = _splitmix((H[ends] - before) * ipw[starts])
    # document of each word: count newlines before each word start
    nl = np.flatnonzero(b == 10)
    doc_of_word = np.searchsorted(nl, starts, side="right")
    offsets = np.searchsorted(doc_of_word, np.arange(n_docs + 1), side="left").astype(np.int64)
    return wh, offsets


# the byte map of _for_hashing on ASCII: letters lower-cased, digits and "_" kept, the rest a space
_ASCII_LUT = np.array(
    [ord(chr(c).lower()) if (chr(c).isalnum() or chr(c) == "_") else 32 for c in range(128)]
    + list(range(128, 256)),
    dtype=np.uint8,
)


_ASCII_TABLE = _ASCII_LUT.tobytes()  # for bytes.translate (one C pass, no numpy gather)


def word_hashes_utf8(
    data: np.ndarray, offsets: np.ndarray, mapped: tuple[np.ndarray, int] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """``word_hashes`` straight from UTF-8 bytes and per-text byte offsets (an Arrow string column's
    buffers), without Python strings; the same hashes. None when some text is not ASCII (those
    take the ``normalize`` path). ``mapped``: (bytes ``base..`` of ``data`` already through the
    ASCII map, ``base``)."""
    n_docs = offsets.size - 1
    if n_docs <= 0:
        return np.zeros(0, np.uint64), np.zeros(1, np.int64)
    raw = data[offsets[0] : offsets[-1]]
    off = (offsets - offsets[0]).astype(np.int64)
    if raw.size and int(raw.max()) >= 128:
        return None
    if raw.size == 0:
        return np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64)
    if mapped is not None:
        b = mapped[0][offsets[0] - mapped[1] : offsets[-1] - mapped[1]]
    else:
        b = _ASCII_LUT[raw]
    is_word = b != 32
    # a text's first byte starts a word even when the previous text ended in one
    doc_start = np.zeros(b.size + 1, dtype=bool)
    doc_start[off[:-1][off[:-1] < b.size]] = True
    prev_word = np.concatenate(([False], is_word[:-1])) & ~doc_start[:-1]
    next_word = np.concatenate((is_word[1:], [False])) & ~doc_start[1:]
    starts = np.flatnonzero(is_word & ~prev_word)
    ends = np.flatnonzero(is_word & ~next_word)
    pw, ipw = _powers(b.size)
    H = np.cumsum(b.astype(np.uint64) * pw, dtype=np.uint64)
    before = np.where(starts > 0, H[np.maximum(starts - 1, 0)], np.uint64(0))
    wh = _splitmix((H[ends] - before) * ipw[starts])
    doc_of_word = np.searchsorted(off, starts, side="right") - 1
    woff = np.searchsorted(doc_of_word, np.arange(n_docs + 1), side="left").astype(np.int64)
    return wh, woff


SLICE = 256  # documents per numpy pass: bigger temporaries cost more in page faults than they save


def shingle(texts: Sequence[str], k: int = 5, normalized: bool = False) -> Shingled:
    """k-word shingle hashes per document. A document shorter than k words gets one shingle of all
    its words; an empty one gets none."""
    if len(texts) <= SLICE:
        return _shingle(texts, k, normalized)
    parts = [_shingle(texts[i : i + SLICE], k, normalized) for i in range(0, len(texts), SLICE)]
    offsets = [parts[0].offsets]
    base = parts[0].offsets[-1]
    for p in parts[1:]:
        offsets.append(p.offsets[1:] + base)
        base += p.offsets[-1]
    return Shingled(np.concatenate([p.hashes for p in parts]), np.concatenate(offsets))


def text_keys(texts: Sequence[str], normalized: bool = False) -> np.ndarray:
    """[n, 2] uint64 per text: its word count and an order-sensitive hash of its word hashes.
    Equal normalized texts (the same words in the same order) get equal keys; different ones
    collide with probability about 2^-64. For exact dedup without building normalized strings."""
    if not texts:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.concatenate(
        [_keys_of(*word_hashes(texts[s : s + SLICE], normalized)) for s in range(0, len(texts), SLICE)]
    )


def _shingle(texts: Sequence[str], k: int, normalized: bool) -> Shingled:
    return _shingle_words(*word_hashes(texts, normalized), k)


def _keys_of(wh: np.ndarray, woff: np.ndarray) -> np.ndarray:
    counts = np.diff(woff)
    out = np.zeros((counts.size, 2), dtype=np.uint64)
    out[:, 0] = counts
    if wh.size:
        pos = np.arange(wh.size, dtype=np.uint64) - np.repeat(woff[:-1], counts).astype(np.uint64)
        mixed = _splitmix(wh ^ _splitmix(pos + np.uint64(0x9E3779B97F4A7C15)))
        nz = counts > 0
        out[nz, 1] = np.add.reduceat(mixed, woff[:-1][nz])
    return out


def shingle_and_keys(
    texts: Sequence[str] | Any, k: int = 5, normalized: bool = False
) -> tuple[Shingled, np.ndarray]:
    """``shingle`` and ``text_keys`` of the same texts, hashing each word once. ``texts`` may be
    an Arrow string array: ASCII slices are then hashed from its buffers directly."""
    parts, keys = [], []
    utf8 = _arrow_utf8(texts) if not isinstance(texts, (list, tuple)) else None
    mapped = None
    if utf8 is not None and not normalized:
        data, offs = utf8
        lo, hi = int(offs[0]), int(offs[-1])
        mapped = (np.frombuffer(data[lo:hi].tobytes().translate(_ASCII_TABLE), np.uint8), lo)
    for s in range(0, max(len(texts), 1), SLICE):
        got = None
        if utf8 is not None and not normalized:
            data, offs = utf8
            got = word_hashes_utf8(data, offs[s : s + SLICE + 1], mapped)
        if got is None:
            part = texts[s : s + SLICE]
            if utf8 is not None:
                part = [v if v is not None else "" for v in part.to_pylist()]
            got = word_hashes(part, normalized)
        wh, woff = got
        parts.append(_shingle_words(wh, woff, k))
        keys.append(_keys_of(wh, woff))
    offsets = [parts[0].offsets]
    base = parts[0].offsets[-1]
    for p in parts[1:]:
        offsets.append(p.offsets[1:] + base)
        base += p.offsets[-1]
    sh = Shingled(np.concatenate([p.hashes for p in parts]), np.concatenate(offsets))
    return sh, np.concatenate(keys)[: len(texts)]


def _arrow_utf8(arr: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The bytes and offsets of an Arrow string array without nulls, as numpy; else None."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    if (
        not isinstance(arr, pa.Array)
        or arr.null_count
        or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type))
    ):
        return None
    _, off_buf, data_buf = arr.buffers()
    odt = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offs = np.frombuffer(off_buf, dtype=odt)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offs


def _shingle_words(wh: np.ndarray, woff: np.ndarray, k: int) -> Shingled:
    n_docs = len(woff) - 1
    counts = np.diff(woff)
    if wh.size == 0:
        return Shingled(np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64))
    # full windows: start i is valid when i + k <= end of its document
    m = wh.size
    acc = np.zeros(max(m - k + 1, 0), np.uint64)
    for j in range(k):
        acc += wh[j : m - k + 1 + j] * _COEF[j]
    doc_end = np.repeat(woff[1:], counts)  # end offset of each word's document
    starts = np.arange(acc.size)
    valid = starts + k <= doc_end[: acc.size]
    full = _splitmix(acc[valid])
    full_doc = np.repeat(np.arange(n_docs), counts)[: acc.size][valid]
    # short documents (0 < words < k): one shingle of all their words
    short = np.flatnonzero((counts > 0) & (counts < k))
    if short.size:
        sh_vals = np.empty(short.size, np.uint64)
        for idx, d in enumerate(short):  # rare: only documents shorter than k words
            w = wh[woff[d] : woff[d + 1]]
            sh_vals[idx] = _splitmix(np.array([np.sum(w * _COEF[: w.size], dtype=np.uint64)]))[0]
        all_doc = np.concatenate([full_doc, short])
        all_val = np.concatenate([full, sh_vals])
        order = np.argsort(all_doc, kind="stable")
        full_doc, full = all_doc[order], all_val[order]
    offsets = np.searchsorted(full_doc, np.arange(n_docs + 1), side="left").astype(np.int64)
    return Shingled(full, offsets)


class MinHasher:
    """K-permutation MinHash signatures (uint32) from shingle hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 1, chunk: int = 4096):
        rng = np.random.Generator(np.random.PCG64(seed))
        self.num_perm = num_perm
        self.seed = seed
        self.a = (rng.integers(0, 2**32, num_perm, dtype=np.uint64) | 1).astype(np.uint32)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
        self.chunk = chunk

    @property
    def tag(self) -> str:
        return f"{SCHEME}-k{self.num_perm}-s{self.seed}"

    def signatures(self, sh: Shingled) -> np.ndarray:
        n_docs = len(sh.offsets) - 1
        out = np.full((n_docs, self.num_perm), EMPTY, dtype=np.uint32)
        if sh.hashes.size == 0:
            return out
        x = ((sh.hashes >> np.uint64(32)) ^ (sh.hashes & _MASK32)).astype(np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        nonempty = np.flatnonzero(np.diff(sh.offsets) > 0)
        # permutations x shingles (transposed), a few documents at a time so the block stays in
        # cache; each document's minimum is a contiguous segment of every row
        # one block buffer for the whole call: a fresh 8 MB temporary per block cost a page fault
        # per 4 KB every time (about a third of the run in system time)
        width = max(self.chunk, int(np.diff(sh.offsets).max()))
        buf = np.empty((self.num_perm, width), dtype=np.uint32)
        d0 = 0
        while d0 < nonempty.size:
            d1 = d0 + 1
            while (
                d1 < nonempty.size and sh.offsets[nonempty[d1] + 1] - sh.offsets[nonempty[d0]] <= self.chunk
            ):
                d1 += 1
            docs = nonempty[d0:d1]
            i, j = sh.offsets[docs[0]], sh.offsets[docs[-1] + 1]
            h = buf[:, : j - i]
            np.multiply(a, x[None, i:j], out=h)
            h += b
            out[docs] = np.minimum.reduceat(h, sh.offsets[docs] - i, axis=1).T
            d0 = d1
        return out

    def __call__(self, texts: Sequence[str], k: int = 5) -> np.ndarray:
        return self.signatures(shingle(texts, k))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique hash arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))
