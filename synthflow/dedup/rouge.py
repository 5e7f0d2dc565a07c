"""Self-Instruct's similarity filter: a new instruction is too similar when its ROUGE-L F1 against
any pooled instruction exceeds 0.7. ROUGE-L comes from ``rouge-score``; candidates come from a
MinHash LSH over word-unigram sets, so the cost does not grow as N^2.

Why the pruning loses little: ROUGE-L F >= 0.7 means an LCS covering >= 70% of both token lists, so
the two word sets share most words (Jaccard >= ~0.54 for equal lengths); the LSH is tuned to a much
lower Jaccard (0.3). ``tests/test_rouge_filter.py`` measures the recall against brute force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthflow.dedup.index import lean
from synthflow.dedup.minhash import MinHasher, shingle


@dataclass
class Nearest:
    key: str | None
    text: str
    rouge_l: float


class RougePool:
    def __init__(
        self,
        threshold: float = 0.7,
        candidate_jaccard: float = 0.3,
        num_perm: int = 64,
        brute_force: bool = False,
    ):
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.hasher = MinHasher(num_perm, seed=7)
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=candidate_jaccard, num_perm=num_perm)
        self.texts: dict[str, str] = {}
        self.brute_force = brute_force
        self.comparisons = 0

    def __len__(self) -> int:
        return len(self.texts)

    def _sigs(self, texts: Sequence[str]) -> np.ndarray:
        return self.hasher.signatures(shingle(texts, 1))

    def nearest(self, texts: Sequence[str]) -> list[Nearest]:
        """The most ROUGE-L-similar pooled instruction for each text (among LSH candidates)."""
        out = []
        for text, sig in zip(texts, self._sigs(texts), strict=True):
            if self.brute_force:
                cands = list(self.texts)
            else:
                cands = self.lsh.query(lean(sig, self.hasher.seed))
            best = Nearest(None, "", 0.0)
            for c in sorted(cands):
                self.comparisons += 1
                f = self.scorer.score(self.texts[c], text)["rougeL"].fmeasure
                if f > best.rouge_l:
                    best = Nearest(c, self.texts[c], f)
            out.append(best)
        return out

    def add(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        for k, t, sig in zip(keys, texts, self._sigs(texts), strict=True):
            if k in self.texts:
                continue
            self.texts[k] = t
            self.lsh.insert(k, lean(sig, self.hasher.seed), check_duplication=False)

    def check_and_add(self, keys: Sequence[str], texts: Sequence[str]) -> list[Nearest]:
        """Nearest pooled instruction per text; texts at or under the threshold join the pool one by
        one, so later texts of the same batch are compared with earlier ones."""
        out = []
        for k, t in zip(keys, texts, strict=True):
            n = self.nearest([t])[0]
            if n.rouge_l <= self.threshold:
                self.add([k], [t])
            out.append(n)
        return out
