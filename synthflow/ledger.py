"""A run's accounting, owned by the flow process alone: what was planned, made, checked, admitted
and rejected, and the seconds each step took. Steps return :class:`StageResult`s; the pipeline's
``record_pass`` hands them here in one fixed order."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from synthflow import revise as revising
from synthflow.funnel import FUNNEL_REJECTS
from synthflow.record import Record, Reject, StageResult

FUNNEL = ("seeds", "generated", "parsed", "verified", "deduped", "scored", "accepted")
STEP_COUNT = {"verify": "verified", "dedup": "deduped", "score": "scored", "accept": "accepted"}
PRE_PARSE = frozenset(FUNNEL_REJECTS["parsed"])


class Ledger:
    def __init__(self, n: int, pool_factor: float = 1.0):
        self.n = n
        # a pool-level selection (``select``) gathers pool_factor x n rows, then chooses n of them
        self.pool = max(n, int(round(n * pool_factor)))
        self.planned = 0  # items planned by this run
        self.discarded = 0  # items made ahead and discarded (the run reached n first)
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self.accepted: list[Record] = []
        self.rejects: list[Reject] = []
        self.started = time.time()
        self.revision_tried: Counter = Counter()  # revisions asked for, per reason kind
        self.shard_reports: list[dict[str, Any]] = []  # a sharded run: what each shard did

    def reached_target(self) -> bool:
        return len(self.accepted) >= self.pool

    def add_generated(self, res: StageResult) -> list[Record]:
        # every generator reject is a parse or generate reject of a generated row
        self.seconds["generate"] += res.seconds
        self.counts["generated"] += len(res.kept) + len(res.rejects)
        # a generator's own checks past parsing (Bonito's answer checks are verify rejects) come
        # after "parsed": the row parsed, and the verify count takes it out
        self.counts["parsed"] += len(res.kept) + sum(j.stage not in PRE_PARSE for j in res.rejects)
        self.rejects.extend(res.rejects)
        return res.kept

    def add_revised(self, res: StageResult) -> list[Record]:
        """A revision round: each revision is a generated row of its own (data or a reject)."""
        self.seconds["revise"] += res.seconds
        for r in [*res.kept, *(j.record for j in res.rejects)]:
            self.revision_tried[revising.head(r.fields["revision_reason"])] += 1
        return self.add_generated(StageResult(kept=res.kept, rejects=res.rejects))  # its seconds: revise's

    def add_stage(self, step: str, res: StageResult) -> list[Record]:
        self.seconds[step] += res.seconds
        self.counts[STEP_COUNT[step]] += len(res.kept)
        self.rejects.extend(res.rejects)
        return res.kept

    def add_admitted(self, res: StageResult) -> None:
        """Rows admitted into the dedup indexes: keep up to ``n``; rows past the target are rejects
        (``accept``, ``over_target``). Dedup rejects at admit time did not survive dedup after all."""
        self._dedup_late(res.rejects)
        room = max(0, self.pool - len(self.accepted))
        self.accepted.extend(res.kept[:room])
        extra = res.kept[room:]
        if extra:
            self.counts["over_target"] += len(extra)
            self.rejects.extend(Reject(r, "accept", "over_target") for r in extra)

    def drop_at_publish(self, res: StageResult) -> None:
        """Rows that another run published while this one ran (``Filter.recheck``): dedup rejects,
        taken out of the counts as at admit. The run publishes fewer rows; it does not top up."""
        self.accepted = list(res.kept)
        self._dedup_late(res.rejects)
        if res.rejects:
            self.counts["dropped_at_publish"] += len(res.rejects)

    def _dedup_late(self, rejects: list[Reject]) -> None:
        """Dedup rejects of rows that had passed dedup, scoring and accept: out of those counts."""
        self.rejects.extend(rejects)
        for key in ("deduped", "scored", "accepted"):
            self.counts[key] -= len(rejects)

    def select(self, res: StageResult) -> None:
        """The pool's choice: the rows not chosen become ``accept`` rejects."""
        self.accepted = list(res.kept)
        self.rejects.extend(res.rejects)
        self.counts["accepted"] -= len(res.rejects)
        self.counts["selected_out"] += len(res.rejects)

    def progress(self, budget: int) -> tuple[float, str]:
        """Percent done (accepted of n) and one line a person can read during a long run."""
        acc, n = len(self.accepted), self.pool
        gen = self.counts.get("generated", 0)
        elapsed = time.time() - self.started
        line = f"accepted {acc} of {n}; planned {self.planned} of {budget} items"
        if gen:
            line += f"; yield {acc / gen:.1%} of {gen} generated"
        if acc and acc < n:
            line += f"; ETA ~{elapsed / acc * (n - acc):.0f} s at this yield"
        elif not acc and self.planned:
            line += f"; at most ~{elapsed / self.planned * (budget - self.planned):.0f} s left (budget)"
        return min(100.0, 100.0 * acc / n), line
