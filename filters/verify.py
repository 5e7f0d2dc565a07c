"""Executor verification: run the program each record carries in the sandbox and put a verdict on
the record. The ``verify`` filter runs one verifier ``kind``; each kind (``filters.verify_math``:
``math_pot``, ``template``; ``filters.verify_code``: ``python_tests``, ``codet``) has its own params,
declares the fields it reads and the fields it writes, and returns one :class:`Check` per row."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import get, register, validate_model
from synthflow.sandbox import Verdict


class VerifyParams(BaseModel):
    """What every verifier kind takes: the sandbox and the verdict's trust."""

    model_config = ConfigDict(extra="forbid")
    kind: str = "math_pot"
    sandbox_mode: str = Field("auto", description="auto, bwrap, unshare or fallback")
    allow_weak: bool = Field(
        False, description="run untrusted code even where only a weak sandbox (unshare, fallback) works"
    )
    require_trusted: bool = Field(
        True, description="a verdict decided inside reach of the program (undecomposable tests) is a reject"
    )
    timeout_s: float = Field(5.0, gt=0)
    workers: int | None = Field(None, gt=0)
    mem_mb: int = Field(1024, gt=16)


@dataclass
class Check:
    ok: bool
    reason: str
    verdict: dict[str, Any]


class Verifier:
    """One verification kind: its params, the fields it reads (every row must have them) and the
    fields it writes (its own typed columns, or fields the generator renders messages from)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[VerifyParams]] = VerifyParams
    reads: ClassVar[frozenset[str]] = frozenset()
    writes: ClassVar[frozenset[str]] = frozenset()
    columns: ClassVar[dict[str, pa.DataType]] = {}

    def __call__(self, records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
        raise NotImplementedError


def verdict_columns(kind: str, v: Verdict, **details: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "status": v.status,
        "mode": v.mode,
        "exc_type": v.exc_type,
        "message": v.message,
        "duration_s": round(v.duration_s, 6),
        "trusted": v.trusted,
        "details": json.dumps(
            {"value": v.value_repr, "stdout": v.stdout[:500], "trusted": v.trusted, **details}, default=str
        ),
    }


SPECIAL_REASONS = {
    "ReboundEntryPoint": "verify:rebound_entry_point",
    "ForbiddenConstruct": "verify:forbidden_construct",
    "NoTestRan": "verify:no_test_ran",
}


def verdict_reason(v: Verdict) -> str:
    """The reject reason of a verdict that is not a pass."""
    if v.exc_type in SPECIAL_REASONS:
        return SPECIAL_REASONS[v.exc_type]
    return f"verify:{v.status}" + (f":{v.exc_type}" if v.exc_type else "")


def numeric(v: Verdict) -> bool:
    """Only a number is an answer (an int, a finite float, a Fraction or a Decimal): a str, list or
    dict whose last number math-verify would read is not."""
    x = v.value
    if v.status != "pass":
        return False
    if type(x) is int or type(x).__name__ == "Fraction":
        return True
    if type(x) is float or type(x).__name__ == "Decimal":
        return math.isfinite(x)
    return False


def make_executor(p: VerifyParams, dask: str | None = None) -> Any:
    from synthflow.sandbox.forkserver import SandboxExecutor

    if dask:  # the run's --dask: the same verdicts, computed on the cluster's workers
        from synthflow.sandbox.dask_executor import DaskSandbox

        return DaskSandbox(dask, mode=p.sandbox_mode, mem_mb=p.mem_mb, allow_weak=p.allow_weak)
    return SandboxExecutor(workers=p.workers, mode=p.sandbox_mode, mem_mb=p.mem_mb, allow_weak=p.allow_weak)


def verifier(kind: str, where: str = "") -> type[Verifier]:
    return get("verifier", kind, f"{where}.kind" if where else "filters.verify.kind")


@register("filter", "verify")
class Verify(Filter):
    """Runs the verifier ``kind`` over a batch; failures are rejects ``verify:<status>``."""

    name = "verify"
    stage = "verify"
    Params = VerifyParams

    @classmethod
    def validate_params(cls, params: dict[str, Any], where: str) -> Any:
        kind = (params or {}).get("kind", VerifyParams.model_fields["kind"].default)
        return validate_model(verifier(str(kind), where).Params, params, where)

    @classmethod
    def reads_of(cls, params: Any, text_field: str = "messages") -> set[str]:
        return set(verifier(params.kind).reads)

    @classmethod
    def writes_of(cls, params: Any) -> set[str]:
        v = verifier(params.kind)
        return set(v.writes) | set(v.columns)

    @property
    def columns(self) -> dict[str, pa.DataType]:  # type: ignore[override]
        return dict(verifier(self.params.kind).columns)

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.kind = verifier(self.params.kind)()
        self.executor = make_executor(self.params, getattr(self.ctx, "dask", None))

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        if not records:
            return res
        for r, c in zip(records, self.kind(records, self.executor, self.params), strict=True):
            r.verdict = c.verdict
            if c.ok and self.params.require_trusted and c.verdict.get("trusted") is False:
                c = Check(False, "verify:untrusted_test", {**c.verdict, "status": "fail"})
                r.verdict = c.verdict
            if c.ok:
                res.kept.append(r)
            else:
                res.rejects.append(Reject(r, self.stage, c.reason))
        return res

    def summary(self) -> dict[str, Any]:
        ex = self.executor
        return {
            "kind": self.params.kind,
            "sandbox": ex.mode,
            "weak_sandbox": ex.weak,
            "seccomp": ex.seccomp,
            "verdicts_trusted": ex.counts["trusted"],
            "verdicts_untrusted": ex.counts["untrusted"],
        }

    def close(self) -> None:
        self.executor.close()
