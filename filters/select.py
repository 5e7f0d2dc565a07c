"""Diversity-aware selection (Deita, Liu et al. 2024), an optional accept-time step.

Rows are walked best first by one score; a row is kept only when its nearest already-kept neighbour
(cosine distance over hashed word uni- and bigrams, scikit-learn ``NearestNeighbors``) is farther
than ``min_distance``. Kept rows of earlier batches count as neighbours too, so the whole run is
spread, not only each batch. Every row gets ``select_nn_distance``; a dropped row's reason names the
neighbour: ``select:too_close:<id>``. When the run finishes, KMeans over every row that reached this
step gives each accepted row a ``cluster_id``; the summary reports how many clusters the accepted
rows cover.
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
    by: str = Field("judge", description="score to walk by, best first (a score name without score_)")
    ascending: bool = Field(False, description="lower is better (e.g. by: ifd)")
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
        self.kept_vecs: list[Any] = []
        self.kept_ids: list[str] = []
        self.candidates: list[Any] = []
        self.n_candidates = 0
        self.clusters: dict[str, Any] = {}

    def _order(self, records: Sequence[Record]) -> list[int]:
        by, asc = self.params.by, self.params.ascending

        def key(i: int) -> tuple[int, float, str]:
            v = records[i].scores.get(by)
            if v is None or v != v:
                return (1, 0.0, records[i].id)  # unscored rows last
            return (0, v if asc else -v, records[i].id)

        return sorted(range(len(records)), key=key)

    def __call__(self, records: Sequence[Record]) -> StageResult:
        import scipy.sparse as sp
        from sklearn.neighbors import NearestNeighbors

        res = StageResult()
        if not records:
            return res
        field = self.params.field or self.ctx.text_field
        X = _vectorize([r.text_for(field) for r in records])
        if self.n_candidates < MAX_CANDIDATES:
            self.candidates.append(X[: MAX_CANDIDATES - self.n_candidates])
        self.n_candidates += X.shape[0]
        prev_d = np.full(len(records), np.inf)
        prev_j = np.full(len(records), -1)
        if self.kept_vecs:
            prev = sp.vstack(self.kept_vecs, format="csr")
            nn = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(prev)
            d, j = nn.kneighbors(X)
            prev_d, prev_j = d[:, 0], j[:, 0]
        sims = (X @ X.T).toarray()
        kept_here: list[int] = []
        for i in self._order(records):
            r = records[i]
            best_d, best_id = float(prev_d[i]), self.kept_ids[prev_j[i]] if prev_j[i] >= 0 else None
            for k in kept_here:
                d = 1.0 - float(sims[i, k])
                if d < best_d:
                    best_d, best_id = d, records[k].id
            r.fields["select_nn_distance"] = None if best_id is None else round(max(best_d, 0.0), 6)
            if best_id is not None and best_d < self.params.min_distance:
                res.rejects.append(Reject(r, self.stage, f"select:too_close:{best_id}"))
                continue
            kept_here.append(i)
            res.kept.append(r)
        for i in kept_here:
            self.kept_vecs.append(X[i])
            self.kept_ids.append(records[i].id)
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
        return {"by": self.params.by, "min_distance": self.params.min_distance, **self.clusters}
