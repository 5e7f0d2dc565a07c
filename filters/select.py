"""Selection over the whole pool (Deita, Liu et al. 2024; Superfiltering, Li et al. 2024), an
optional accept-time step.

The run gathers a pool of ``pool_factor`` x n rows that passed every other check; when it ends, the
pool is ordered best first by the product of the ``by`` scores (Deita: complexity x quality; a row
missing one of them comes after every scored row), rows at or above a ``max_scores`` bound leave
(Superfiltering keeps IFD < 1: ``max_scores: {ifd: 1.0}``, ``by: [ifd]``, the highest IFD first),
only the first ``keep_fraction`` of the rest are considered, and the diversity walk keeps a row only
when its nearest kept neighbour (cosine distance over hashed word uni- and bigrams) is farther than
``min_distance``, until n rows are kept. Every pooled row gets ``select_nn_distance``; rejects:
``select:too_close:<id>``, ``select:above_max:<score>``, ``select:not_chosen``. KMeans over the pool
gives each kept row a ``cluster_id``; the summary reports how many clusters the kept rows cover.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register

MAX_CANDIDATES = 20_000  # rows kept in memory for the final clustering


class SelectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: list[str] = Field(
        default_factory=lambda: ["judge"],
        description="scores (names without score_) whose product orders the pool, highest first "
        "(Deita: a complexity and a quality score)",
    )
    ascending: bool = Field(False, description="lowest first instead")
    max_scores: dict[str, float] = Field(
        default_factory=dict,
        description="rows with a score at or above its bound leave (Superfiltering: {ifd: 1.0})",
    )
    keep_fraction: float = Field(
        1.0, gt=0, le=1, description="consider only this top share of the ordered pool"
    )
    pool_factor: float = Field(2.0, ge=1, description="gather this many times n rows before selecting n")
    min_distance: float = Field(0.1, ge=0, le=1, description="cosine distance a kept row must keep")
    field: str | None = Field(None, description="text to compare (default: the generator's text field)")
    clusters: int = Field(8, ge=1, description="KMeans clusters for cluster_id and coverage")


def _vectorize(texts: list[str]) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    hv = HashingVectorizer(n_features=1 << 18, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return hv.transform(texts)


@register("filter", "select")
class Select(Filter):
    name = "select"
    stage = "accept"
    reads_text = True
    Params = SelectParams
    shardable = False  # min_distance compares with every row kept so far, in order
    columns: ClassVar[dict[str, pa.DataType]] = {"select_nn_distance": pa.float64(), "cluster_id": pa.int64()}

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.candidates: list[Any] = []
        self.clusters: dict[str, Any] = {}
        self.dropped: Counter = Counter()

    def _key(self, r: Record) -> tuple[int, float, str]:
        vals = [r.scores.get(b) for b in self.params.by]
        if any(v is None or v != v for v in vals):
            return (1, 0.0, r.id)  # a row missing a score comes after every scored row
        prod = float(np.prod(vals))
        return (0, prod if self.params.ascending else -prod, r.id)

    def __call__(self, records: Sequence[Record]) -> StageResult:
        """Rows join the pool; the choice is made once the pool is complete (:meth:`choose`)."""
        return StageResult(kept=list(records))

    def choose(self, pool: list[Record], n: int) -> StageResult:
        """The pool ordered and walked: up to ``n`` rows kept, every other one a reject with why."""
        res = StageResult()
        field = self.params.field or self.ctx.text_field
        eligible = []
        for r in pool:
            over = next((k for k, bound in self.params.max_scores.items()
                         if r.scores.get(k) is not None and r.scores[k] >= bound), None)  # fmt: skip
            if over is not None:
                res.rejects.append(Reject(r, self.stage, f"select:above_max:{over}"))
            else:
                eligible.append(r)
        eligible.sort(key=self._key)
        cut = max(1, int(np.ceil(self.params.keep_fraction * len(eligible)))) if eligible else 0
        walk, rest = eligible[:cut], eligible[cut:]
        X = _vectorize([r.text_for(field) for r in pool]) if pool else None
        if X is not None:
            self.candidates = [X[:MAX_CANDIDATES]]
        row_of = {r.id: i for i, r in enumerate(pool)}
        kept_rows: list[int] = []
        for r in walk:
            if len(res.kept) >= n:
                rest.append(r)
                continue
            i = row_of[r.id]
            best_d, best_id = np.inf, None
            if kept_rows:
                sims = (X[kept_rows] @ X[i].T).toarray()[:, 0]
                k = int(np.argmax(sims))
                best_d, best_id = max(0.0, 1.0 - float(sims[k])), pool[kept_rows[k]].id
            r.fields["select_nn_distance"] = None if best_id is None else round(max(best_d, 0.0), 6)
            if best_id is not None and best_d < self.params.min_distance:
                res.rejects.append(Reject(r, self.stage, f"select:too_close:{best_id}"))
                continue
            kept_rows.append(i)
            res.kept.append(r)
        res.rejects.extend(Reject(r, self.stage, "select:not_chosen") for r in rest)
        for j in res.rejects:
            self.dropped[j.head] += 1
        return res

    def finalize(self, accepted: list[Record]) -> None:
        """Cluster every row that reached this step; label the accepted rows; measure coverage."""
        import scipy.sparse as sp
        from sklearn.cluster import KMeans

        if not self.candidates or not accepted:
            return
        cand = sp.vstack(self.candidates, format="csr")
        k = min(self.params.clusters, cand.shape[0])
        km = KMeans(n_clusters=k, n_init=3, random_state=0).fit(cand)
        field = self.params.field or self.ctx.text_field
        labels = km.predict(_vectorize([r.text_for(field) for r in accepted]))
        for r, c in zip(accepted, labels.tolist(), strict=True):
            r.fields["cluster_id"] = int(c)
        sizes = Counter(labels.tolist())
        self.clusters = {
            "k": k,
            "candidates": int(cand.shape[0]),
            "accepted_per_cluster": {str(c): sizes.get(c, 0) for c in range(k)},
            "covered": sum(1 for c in range(k) if sizes.get(c)),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "by": self.params.by,
            "min_distance": self.params.min_distance,
            "dropped": dict(self.dropped),
            **self.clusters,
        }
