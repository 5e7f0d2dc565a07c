"""Near-duplicate index: our MinHash signatures in datasketch's ``MinHashLSH`` (in memory, persisted
next to the data, or in Redis so several workers share it), plus the shingle sets needed to confirm
every candidate by exact Jaccard before anything is dropped."""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthflow.atomic import atomic_path
from synthflow.dedup.minhash import MinHasher, jaccard, shingle
from synthflow.errors import UserError

INDEX_VERSION = 1


def lean(sig: np.ndarray, seed: int) -> Any:
    """Our uint32 signature as a datasketch sketch. Its permutations are affine maps mod 2^32 over
    pre-mixed hashes, the family datasketch calls ``affine32``."""
    from datasketch import LeanMinHash  # imported when used: it costs 0.3 s at start-up

    return LeanMinHash(seed=seed, hashvalues=sig, scheme="affine32")


@functools.lru_cache(maxsize=64)
def bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's choice of (bands, rows) for a Jaccard threshold (equal weights on the false
    positive and false negative areas), computed in numpy: importing datasketch's own (through
    scipy.integrate) costs 0.8 s of start-up. Simpson's rule on 4001 points; a test checks it
    picks what datasketch picks."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bb = np.array([p[0] for p in pairs], dtype=float)[:, None]
    rr = np.array([p[1] for p in pairs], dtype=float)[:, None]

    def area(lo: float, hi: float, f: Any, n: int = 4001) -> np.ndarray:
        y = f(np.linspace(lo, hi, n)[None, :])
        h = (hi - lo) / (n - 1)
        return h / 3 * (y[:, 0] + y[:, -1] + 4 * y[:, 1:-1:2].sum(1) + 2 * y[:, 2:-1:2].sum(1))

    fp = area(0.0, threshold, lambda s: 1 - (1 - s**rr) ** bb)
    fn = area(threshold, 1.0, lambda s: (1 - s**rr) ** bb)
    return pairs[int(np.argmin(0.5 * fp + 0.5 * fn))]


def _read_segment(seg: Path, tag: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, signature, shingle set) rows of one index segment file."""
    try:
        d = np.load(seg, allow_pickle=False)
        got, keys, sigs, offsets, flat = str(d["tag"]), d["keys"], d["sigs"], d["offsets"], d["sets"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise UserError(f"{seg}: not a readable near-dup index segment ({e}); move it aside") from None
    if got != tag:
        raise UserError(f"{seg}: index segment was built with {got}, this run uses {tag}; move it aside")
    return [(k, sigs[i], flat[offsets[i] : offsets[i + 1]]) for i, k in enumerate(keys.tolist())]


@dataclass
class Match:
    key: str
    jaccard: float


class NearDupIndex:
    """Streaming near-dup index. ``check_and_add`` tests a batch against everything added so far
    (earlier batches, earlier runs) and adds the rows that are new."""

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingle_k: int = 5,
        seed: int = 1,
        redis: dict[str, Any] | None = None,
        name: str = "synthflow",
        lsh_threshold: float | None = None,
    ):
        """``lsh_threshold``: where the LSH bands are tuned (default: ``threshold``). Lower finds
        more candidates just above ``threshold`` (each is confirmed by exact Jaccard)."""
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_k = shingle_k
        self.lsh_threshold = lsh_threshold
        from datasketch import MinHashLSH

        self.hasher = MinHasher(num_perm, seed)
        lsh_t = threshold if lsh_threshold is None else lsh_threshold
        self.bands, self.rows = bands_rows(lsh_t, num_perm)
        self.redis_cfg = redis
        self.name = name
        self.tag = f"{self.hasher.tag}-sh{shingle_k}-t{threshold:g}-v{INDEX_VERSION}" + (
            f"-l{lsh_t:g}" if lsh_threshold is not None else ""
        )
        if redis is not None:
            self.lsh = MinHashLSH(
                threshold=lsh_t,
                num_perm=num_perm,
                storage_config={"type": "redis", "basename": f"{name}:{self.tag}".encode(), "redis": redis},
            )
            import redis as redis_lib

            self._r = redis_lib.Redis(**redis)
            try:
                self._r.ping()
            except redis_lib.RedisError as e:
                raise UserError(f"redis at {redis.get('host')}:{redis.get('port')}: {e}") from None
            self.sets: dict[str, np.ndarray] | None = None
        else:
            self.lsh = MinHashLSH(threshold=lsh_t, num_perm=num_perm)
            self.sets = {}
        self.added: list[str] = []
        self.sigs: dict[str, np.ndarray] = {}  # signatures of rows added here (for segments)
        self.groups: dict[str, str] = {}  # key -> group (this process only): same-group rows never match

    # ---- shingle sets (for exact confirmation) -------------------------------------------------
    def _set_key(self, key: str) -> str:
        return f"{self.name}:{self.tag}:set:{key}"

    def _get_set(self, key: str) -> np.ndarray | None:
        if self.sets is not None:
            return self.sets.get(key)
        raw = self._r.get(self._set_key(key))
        return None if raw is None else np.frombuffer(raw, dtype=np.uint64)

    def _put_set(self, key: str, s: np.ndarray) -> None:
        if self.sets is not None:
            self.sets[key] = s
        else:
            self._r.set(self._set_key(key), s.tobytes())

    def __len__(self) -> int:
        if self.sets is not None:
            return len(self.sets)
        return sum(1 for _ in self._r.scan_iter(f"{self.name}:{self.tag}:set:*", count=1000))

    def __contains__(self, key: str) -> bool:
        return key in self.lsh

    # ---- the work --------------------------------------------------------------------------------
    def query(
        self, texts: Sequence[str], groups: Sequence[str] | None = None, keys: Sequence[str] | None = None
    ) -> list[Match | None]:
        """Best confirmed match for each text among the rows already added, adding nothing. A row
        whose key is already in the index (a resumed run) matches nothing."""
        sh = shingle(texts, self.shingle_k)
        out: list[Match | None] = []
        for n, (sig, s) in enumerate(zip(self.hasher.signatures(sh), sh.sets(), strict=True)):
            if keys is not None and keys[n] in self.lsh:
                out.append(None)
                continue
            out.append(self._best(lean(sig, self.hasher.seed), s, groups[n] if groups is not None else None))
        return out

    def _best(self, m: Any, s: np.ndarray, group: str | None = None) -> Match | None:
        best: Match | None = None
        for cand in sorted(self.lsh.query(m)):
            if group is not None and self.groups.get(cand) == group:
                continue
            other = self._get_set(cand)
            if other is None:
                continue
            j = jaccard(s, other)
            if j >= self.threshold and (best is None or j > best.jaccard):
                best = Match(cand, j)
        return best

    def check_and_add(
        self, keys: Sequence[str], texts: Sequence[str], groups: Sequence[str] | None = None
    ) -> list[Match | None]:
        """For each row: the earlier row it near-duplicates (confirmed Jaccard >= threshold), or
        None, in which case it is added. Rows of the same batch are checked against each other too."""
        sh = shingle(texts, self.shingle_k)
        sigs = self.hasher.signatures(sh)
        sets = sh.sets()
        out: list[Match | None] = []
        for n, (key, sig, s) in enumerate(zip(keys, sigs, sets, strict=True)):
            group = groups[n] if groups is not None else None
            if key in self.lsh:  # the same row again (a resumed run): not a duplicate of itself
                out.append(None)
                continue
            m = lean(sig, self.hasher.seed)
            best = self._best(m, s, group)
            if best is None:
                if group is not None:
                    self.groups[key] = group
                self.lsh.insert(key, m, check_duplication=False)
                self._put_set(key, s)
                self.added.append(key)
                if self.sets is not None:
                    self.sigs[key] = sig
            out.append(best)
        return out

    def remove(self, keys: Sequence[str]) -> None:
        for k in keys:
            self.sigs.pop(k, None)
            if k in self.lsh:
                self.lsh.remove(k)
            if self.sets is not None:
                self.sets.pop(k, None)
            else:
                self._r.delete(self._set_key(k))

    # ---- persistence (memory backend) ------------------------------------------------------------
    # Each run appends one segment file (``<dir>/<run_id>.npz``: keys, signatures, shingle sets;
    # no pickle); nothing is ever rewritten whole, so runs that publish together lose nothing.
    def save_segment(self, path: Path, keys: Sequence[str], keep: set[str] | None = None) -> int:
        """Write the given rows (added by this process) as one segment, atomically. Rows already
        in the segment (a resumed run's) stay when they are in ``keys`` or ``keep``."""
        if self.sets is None:
            return 0  # redis persists itself
        wanted = set(keys) | (keep or set())
        rows = {k: (self.sigs[k], self.sets[k]) for k in keys if k in self.sigs}
        if path.is_file():  # a resumed run that had published: its earlier rows stay
            for k, sig, s in _read_segment(path, self.tag):
                if k in wanted:
                    rows.setdefault(k, (sig, s))
        if not rows:
            return 0
        keys = list(rows)
        sets = [rows[k][1] for k in keys]
        offsets = np.cumsum([0, *(len(s) for s in sets)]).astype(np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                tag=np.array(self.tag),
                keys=np.array(keys, dtype=str),
                sigs=np.stack([rows[k][0] for k in keys]),
                offsets=offsets,
                sets=np.concatenate(sets).astype(np.uint64),
            )
        return len(keys)

    def empty_like(self) -> NearDupIndex:
        """A new empty in-memory index with this one's parameters (its segments are readable)."""
        return NearDupIndex(
            self.threshold, self.num_perm, self.shingle_k, self.hasher.seed, name=self.name,
            lsh_threshold=self.lsh_threshold,
        )  # fmt: skip

    def load_segments(self, folder: Path) -> int:
        """Add every segment under ``folder``; returns the rows loaded."""
        if self.sets is None or not folder.is_dir():
            return 0
        return self.load_files(sorted(folder.glob("*.npz")))

    def load_files(self, segments: Sequence[Path]) -> int:
        """Add the rows of these segment files; returns the rows loaded."""
        if self.sets is None:
            return 0
        n = 0
        for seg in segments:
            for key, sig, sset in _read_segment(seg, self.tag):
                if key in self.lsh:
                    continue
                self.lsh.insert(key, lean(sig, self.hasher.seed), check_duplication=False)
                self.sets[key] = sset
                n += 1
        return n

    def save(self, path: Path) -> None:
        """Atomic: write a temporary file beside it, then rename."""
        if self.sets is None:
            return  # redis persists itself
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(
                {"tag": self.tag, "lsh": self.lsh, "sets": self.sets}, f, protocol=pickle.HIGHEST_PROTOCOL
            )

    def load(self, path: Path) -> bool:
        if self.sets is None or not path.is_file():
            return False
        with open(path, "rb") as f:
            d = pickle.load(f)
        if d.get("tag") != self.tag:
            raise UserError(
                f"{path}: index was built with {d.get('tag')}, this run uses {self.tag}; move it aside"
            )
        self.lsh, self.sets = d["lsh"], d["sets"]
        return True
