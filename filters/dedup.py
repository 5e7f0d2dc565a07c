"""Dedup stages: exact (normalized text hash), then MinHash LSH near-dup (datasketch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register
from synthflow.text import exact_key, words


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = None


@register("filter", "exact_dedup")
class ExactDedup(Filter):
    """Drops a record whose normalized text (case, whitespace, punctuation) was seen before."""

    name = "exact_dedup"
    stage = "dedup"
    Params = ExactParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.seen: dict[str, str] = {}

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        field = self.params.field or self.ctx.text_field
        for r in records:
            k = exact_key(r.text_for(field))
            if k in self.seen:
                res.rejects.append(Reject(r, self.stage, f"dedup:exact:{self.seen[k]}"))
            else:
                self.seen[k] = r.id
                res.kept.append(r)
        return res


class NearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = None
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16)
    shingle: int = Field(5, ge=1)


@register("filter", "near_dedup")
class NearDedup(Filter):
    """MinHash LSH over word shingles; candidates are confirmed by exact Jaccard before a drop."""

    name = "near_dedup"
    stage = "dedup"
    Params = NearParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        p = self.params
        self.lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)
        self.shingles: dict[str, set[str]] = {}

    def _shingles(self, text: str) -> set[str]:
        w = words(text)
        k = self.params.shingle
        if len(w) < k:
            return {" ".join(w)} if w else set()
        return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        field = self.params.field or self.ctx.text_field
        for r in records:
            sh = self._shingles(r.text_for(field))
            m = MinHash(num_perm=self.params.num_perm)
            m.update_batch([s.encode() for s in sh])
            dup = None
            for cand in self.lsh.query(m):
                other = self.shingles[cand]
                j = len(sh & other) / max(1, len(sh | other))
                if j >= self.params.threshold:
                    dup = (cand, j)
                    break
            if dup:
                res.rejects.append(Reject(r, self.stage, f"dedup:near:{dup[0]}:jaccard={dup[1]:.2f}"))
            else:
                self.lsh.insert(r.id, m)
                self.shingles[r.id] = sh
                res.kept.append(r)
        return res
