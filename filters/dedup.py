"""Dedup stages: exact (normalized text hash), then MinHash LSH near-dup confirmed by exact Jaccard.

Both are streaming: in the dedup step each batch is looked up against every row accepted so far in
the run and in earlier runs under the same output root, or in Redis for several workers. On disk the
index lives in ``<root>/.synthflow-index/``: each run that publishes adds one segment file of its
own rows (written atomically, never rewriting another run's), so runs that publish together lose
nothing. Rows enter the index only when the accept step keeps them (``admit``): a row that
a later step rejected (shirker, thresholds) never blocks a good one, and within a batch the first
accepted row of a duplicate pair wins.

A run reads the segments when it starts. Runs that overlap do not see each other's rows then, so at
publish (one run at a time, under the root's publish lock) ``recheck`` reads the segments written
since, and a row that another run published first becomes a dedup reject of this one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthflow.atomic import atomic_path
from synthflow.dedup.index import NearDupIndex
from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register
from synthflow.text import exact_key, normalize

INDEX_DIR = ".synthflow-index"


_NUMBER = re.compile(r"\d+")


def short_form(text: str) -> str:
    """A short text as the tokens the short path compares: its words and word pairs, numbers masked
    (each token one shingle of size 1)."""
    w = ["0" if _NUMBER.fullmatch(x) else x for x in normalize(text).split()]
    return " ".join(w + [f"{a}_{b}" for a, b in zip(w, w[1:], strict=False)])


def index_dir(ctx: Any) -> Path | None:
    return Path(ctx.out_root) / INDEX_DIR if ctx.out_root is not None else None


def stamps(folder: Path | None, suffix: str) -> dict[str, tuple[int, int]]:
    """Segment file name -> (inode, mtime): a segment written or replaced since differs."""
    out: dict[str, tuple[int, int]] = {}
    for f in sorted(folder.glob(f"*{suffix}")) if folder is not None and folder.is_dir() else []:
        try:
            st = f.stat()
        except OSError:  # replaced between the listing and the stat: read it at the recheck
            continue
        out[f.name] = (st.st_ino, st.st_mtime_ns)
    return out


def written_since(
    folder: Path | None, suffix: str, before: dict[str, tuple[int, int]], own: str
) -> list[Path]:
    """The segments under ``folder`` that other runs wrote or replaced after ``before`` was taken."""
    if folder is None:
        return []
    return [
        folder / n for n, s in stamps(folder, suffix).items() if n != f"{own}{suffix}" and before.get(n) != s
    ]


def _read_keys(path: Path) -> list[tuple[str, str]]:
    """(exact key, row id) lines of one exact-dedup index file; none when it does not exist."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(k, rid) for k, _, rid in (line.partition("\t") for line in lines)]


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = None
    cross_run: bool = Field(True, description="also drop rows seen in earlier runs under the output root")


@register("filter", "exact_dedup")
class ExactDedup(Filter):
    """Drops a record whose normalized text (case, whitespace, punctuation) was seen before."""

    name = "exact_dedup"
    stage = "dedup"
    reads_text = True
    Params = ExactParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.seen: dict[str, str] = {}
        self.new: dict[str, str] = {}
        d = index_dir(self.ctx)
        self.dir = d / "exact-v1" if d is not None and self.params.cross_run else None
        self.stamps = stamps(self.dir, ".tsv")  # before reading: a segment written meanwhile is read again
        self.dropped_at_publish = 0
        if self.dir is not None:
            legacy = d / "exact-v1.tsv"  # one file rewritten per run, before segments
            for f in [legacy, *sorted(self.dir.glob("*.tsv"))]:
                for k, rid in _read_keys(f):
                    self.seen.setdefault(k, rid)

    def _check(self, records: Sequence[Record], add: bool) -> StageResult:
        res = StageResult()
        field = self.params.field or self.ctx.text_field
        for r in records:
            k = exact_key(r.text_for(field))
            prev = self.seen.get(k)
            if prev is not None and prev != r.id:
                res.rejects.append(Reject(r, self.stage, f"dedup:exact:{prev}"))
                continue
            if add:
                self.seen[k] = r.id
                self.new[k] = r.id
            res.kept.append(r)
        return res

    def __call__(self, records: Sequence[Record]) -> StageResult:
        """Look up only: duplicates of accepted rows go; duplicates within the batch wait for admit."""
        return self._check(records, add=False)

    def admit(self, records: list[Record]) -> StageResult:
        return self._check(records, add=True)

    def recheck(self, accepted: list[Record]) -> StageResult:
        """Rows that a run which overlapped this one published first (their keys are in segments
        written since this run started) are dedup rejects naming that run's row."""
        fresh: dict[str, str] = {}
        for f in written_since(self.dir, ".tsv", self.stamps, self.ctx.run_id or "run"):
            for k, rid in _read_keys(f):
                fresh.setdefault(k, rid)
        res = StageResult()
        field = self.params.field or self.ctx.text_field
        for r in accepted:
            prev = fresh.get(exact_key(r.text_for(field)))  # (this run's own segment is not read)
            if prev is not None:
                res.rejects.append(Reject(r, self.stage, f"dedup:exact:{prev}"))
            else:
                res.kept.append(r)
        self.dropped_at_publish += len(res.rejects)
        return res

    def summary(self) -> dict[str, Any]:
        return {"dropped_at_publish": self.dropped_at_publish} if self.dropped_at_publish else {}

    def commit(self, accepted: set[str]) -> None:
        """This run's published keys, as its own segment of the cross-run index."""
        if self.dir is None:
            return
        keep = {k: rid for k, rid in self.new.items() if rid in accepted}
        seg = self.dir / f"{self.ctx.run_id or 'run'}.tsv"
        for k, rid in _read_keys(seg):  # a resumed run that had published: its earlier rows stay
            if rid in accepted:
                keep.setdefault(k, rid)
        if not keep:
            return
        with atomic_path(seg) as tmp:
            tmp.write_text("".join(f"{k}\t{rid}\n" for k, rid in keep.items()))


class NearParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = None
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16)
    shingle: int = Field(5, ge=1)
    cross_run: bool = True
    short_words: int = Field(
        120,
        ge=0,
        description="texts under this many words are compared as word 1-2-grams, numbers masked "
        "(0: every text as long)",
    )
    short_threshold: float = Field(0.65, gt=0, lt=1, description="Jaccard threshold of the short-text path")
    group: str | None = Field(
        None, description="field whose equal values never count as duplicates (e.g. template_id)"
    )
    redis: dict[str, Any] | None = Field(
        None, description="e.g. {host: 127.0.0.1, port: 6379}: share the index"
    )


@register("filter", "near_dedup")
class NearDedup(Filter):
    """MinHash LSH with exact Jaccard confirmation; the reject reason names the row it duplicates.

    Two representations, by the text's length. Long texts (``short_words``, 120, words and more): word
    5-gram shingles at ``threshold`` (0.8), the document path. Short texts (instructions, math
    problems): word unigrams and bigrams with every number masked, at ``short_threshold`` (0.65),
    with the LSH tuned lower (0.45) so pairs just above it are found: one swapped word in a 12-word
    instruction or a number-swapped problem has Jaccard 0.14-0.29 on 5-gram shingles but 0.7-1.0
    here, while distinct problems on one topic stay under 0.45 (``tests/test_dedup.py``). Variants
    of one template (``group``) never count as duplicates of each other. A short text is compared
    only with short texts."""

    name = "near_dedup"
    stage = "dedup"
    reads_text = True
    Params = NearParams

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        p = self.params
        self.index = NearDupIndex(p.threshold, p.num_perm, p.shingle, redis=p.redis)
        self.short = NearDupIndex(
            p.short_threshold, p.num_perm, 1, redis=p.redis, lsh_threshold=min(0.45, p.short_threshold)
        )
        d = index_dir(self.ctx)
        on_disk = d is not None and p.cross_run and p.redis is None
        self.dir = d / f"near-{self.index.tag}" if on_disk else None
        self.short_dir = d / f"near-{self.short.tag}" if on_disk else None
        self.loaded = False
        # before reading: a segment written meanwhile is read again at the recheck
        self.stamps = {"long": stamps(self.dir, ".npz"), "short": stamps(self.short_dir, ".npz")}
        self.dropped_at_publish = 0
        if self.dir is not None:
            legacy = d / f"near-{self.index.tag}.pkl"  # the whole index in one file, before segments
            self.loaded = self.index.load(legacy) if legacy.is_file() else False
            self.loaded = self.index.load_segments(self.dir) > 0 or self.loaded
            self.loaded = self.short.load_segments(self.short_dir) > 0 or self.loaded
        self.dropped = 0
        self.dropped_short = 0

    def _is_short(self, text: str) -> bool:
        return 0 < len(text.split()) < self.params.short_words

    def _match(
        self, records: Sequence[Record], add: bool, long: NearDupIndex | None, short: NearDupIndex | None
    ) -> tuple[StageResult, int]:
        """Each record looked up in the index of its length (``long`` or ``short``; None: nothing
        there) and, with ``add``, added when new. A match is a reject naming the row it duplicates.
        Returns the result and how many of its rejects are short texts."""
        res, n_short = StageResult(), 0
        if not records:
            return res, n_short
        field = self.params.field or self.ctx.text_field
        groups = [str(r.fields.get(self.params.group)) for r in records] if self.params.group else None
        texts = [r.text_for(field) for r in records]
        is_short = [self._is_short(t) for t in texts]
        matches: list[Any] = [None] * len(records)
        for flag, index in ((False, long), (True, short)):
            pick = [i for i in range(len(records)) if is_short[i] == flag]
            if not pick or index is None:
                continue
            keys = [records[i].id for i in pick]
            txt = [short_form(texts[i]) if flag else texts[i] for i in pick]
            grp = [groups[i] for i in pick] if groups is not None else None
            got = index.check_and_add(keys, txt, grp) if add else index.query(txt, grp, keys)
            for i, m in zip(pick, got, strict=True):
                matches[i] = m
        for r, m, flag in zip(records, matches, is_short, strict=True):
            if m is None:
                res.kept.append(r)
            else:
                n_short += flag
                kind = "near_short" if flag else "near"
                res.rejects.append(Reject(r, self.stage, f"dedup:{kind}:{m.key}:jaccard={m.jaccard:.2f}"))
        return res, n_short

    def _check(self, records: Sequence[Record], add: bool) -> StageResult:
        res, n_short = self._match(records, add, self.index, self.short)
        self.dropped += len(res.rejects)
        self.dropped_short += n_short
        return res

    def __call__(self, records: Sequence[Record]) -> StageResult:
        """Look up only: near-duplicates of accepted rows go; those within the batch wait for admit."""
        return self._check(records, add=False)

    def admit(self, records: list[Record]) -> StageResult:
        return self._check(records, add=True)

    def recheck(self, accepted: list[Record]) -> StageResult:
        """Rows near-duplicating a row that a run which overlapped this one published first (in
        segments written since this run started) are dedup rejects naming that row. (With Redis the
        index is shared live: overlapping runs saw each other's rows at admit; rows two runs admit
        in the same instant are not rechecked.)"""
        own = self.ctx.run_id or "run"
        others: list[NearDupIndex | None] = []  # (long, short): the rows of those segments alone
        for index, folder, before in ((self.index, self.dir, self.stamps["long"]),
                                      (self.short, self.short_dir, self.stamps["short"])):  # fmt: skip
            files = written_since(folder, ".npz", before, own)  # (this run's own segment is not read)
            other = index.empty_like() if files else None
            if other is not None:
                other.load_files(files)
            others.append(other)
        if all(o is None for o in others):
            return StageResult(kept=list(accepted))
        res, _ = self._match(accepted, False, *others)
        self.dropped_at_publish += len(res.rejects)
        return res

    def commit(self, accepted: set[str]) -> None:
        # rows that passed here but were not published (later filters, over target) leave the index
        for index, folder in ((self.index, self.dir), (self.short, self.short_dir)):
            index.remove([k for k in index.added if k not in accepted])
            if folder is not None:
                keys = [k for k in index.added if k in accepted]
                # a resumed run's rows from its own earlier segment are not in ``added``: kept if published
                index.save_segment(folder / f"{self.ctx.run_id or 'run'}.npz", keys, keep=accepted)

    def summary(self) -> dict[str, Any]:
        return {
            "bands": self.index.bands,
            "rows": self.index.rows,
            "dropped": self.dropped,
            "dropped_short_path": self.dropped_short,
            "index_loaded": self.loaded,
            **({"dropped_at_publish": self.dropped_at_publish} if self.dropped_at_publish else {}),
        }
