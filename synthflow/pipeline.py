"""One batch's way through the steps, defined once: generate, then verify -> dedup -> score ->
accept, then the recipe's revision rounds (the rejects of a pass revised and checked again).

:func:`process_batch` is the only batch loop. The Prefect flow, shards, the merge's replay,
benches and tests all call it; what differs is *where* each step runs (``step``: directly, or as
a Prefect task) and *when* the ledger hears of it (``sink``: as each pass ends, or later through
:func:`replay`, in the same order). Nothing here imports Prefect or counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from synthflow.filtering import STEPS
from synthflow.record import Record, StageResult
from synthflow.stages import Stages

# a step runner: step name ("generate", "revise", or one of STEPS) and its arguments -> its result
StepRunner = Callable[..., StageResult]


class Sink(Protocol):
    """What hears of a batch's passes: the run's ledger."""

    def add_generated(self, res: StageResult) -> list[Record]: ...
    def add_revised(self, res: StageResult) -> list[Record]: ...
    def add_stage(self, step: str, res: StageResult) -> list[Record]: ...
    def add_admitted(self, res: StageResult) -> None: ...


def dispatch(st: Stages, step: str, *args: Any) -> StageResult:
    """Run one step on this process's stages."""
    if step == "generate":
        return st.generate(*args)
    if step == "revise":
        return st.revise(*args)
    return st.apply(step, *args)


def direct(st: Stages) -> StepRunner:
    """Each step called in this process, one after the other."""
    return lambda step, *args: dispatch(st, step, *args)


@dataclass
class Pass:
    """One pass of the checks: over the generated rows (round 0) or a revision round's rows."""

    first: StageResult  # what generate or revise returned
    steps: dict[str, StageResult] = field(default_factory=dict)  # empty when revise returned nothing
    round: int = 0


@dataclass
class BatchResult:
    passes: list[Pass]

    @property
    def generated(self) -> StageResult:
        return self.passes[0].first

    def accepted(self) -> list[StageResult]:
        """The accept results, in the order the ledger admits them."""
        return [p.steps["accept"] for p in self.passes if "accept" in p.steps]


def check(first: StageResult, step: StepRunner) -> dict[str, StageResult]:
    """verify -> dedup -> score -> accept over what a generate or revise step returned."""
    out: dict[str, StageResult] = {}
    prev = first
    for name in STEPS:
        prev = out[name] = step(name, prev.kept)
    return out


def process_batch(
    st: Stages,
    items: list[Any],
    step: StepRunner | None = None,
    sink: Sink | None = None,
    generated: StageResult | None = None,
) -> BatchResult:
    """The batch loop. ``generated``: the batch was made already (the flow makes the next batch
    while this one is checked). With a ``sink``, each pass is recorded (and its accepted rows
    admitted into the dedup indexes) as soon as it ends, so a revision round's dedup sees the rows
    admitted before it; without one (shards), :func:`replay` records the batch later."""
    step = step or direct(st)
    first = generated if generated is not None else step("generate", items)
    passes = [Pass(first, check(first, step), 0)]
    if sink is not None:
        record_pass(passes[-1], st, sink)
    cfg = st.spec.recipe.revise
    for rnd in range(1, (cfg.rounds if cfg else 0) + 1):
        last = passes[-1].steps  # the rejects of these steps are revised (dedup's are not)
        revised = step("revise", [last["verify"], last["score"], last["accept"]], rnd)
        passes.append(Pass(revised, check(revised, step) if revised.kept else {}, rnd))
        if sink is not None:
            record_pass(passes[-1], st, sink)
        if not revised.kept:
            break
    return BatchResult(passes)


def record_pass(p: Pass, st: Stages, sink: Sink) -> None:
    """One pass into the ledger, in the one order every run path uses."""
    if p.round == 0:
        sink.add_generated(p.first)
    else:
        sink.add_revised(p.first)
    for name in STEPS:
        if name in p.steps:
            sink.add_stage(name, p.steps[name])
    if "accept" in p.steps:
        sink.add_admitted(st.admit(p.steps["accept"].kept))


def replay(batch: BatchResult, st: Stages, sink: Sink) -> None:
    """A batch made elsewhere (a shard) into this run's ledger, as :func:`process_batch` records it."""
    for p in batch.passes:
        record_pass(p, st, sink)
