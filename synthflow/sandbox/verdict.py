"""Verdicts and jobs shared by every executor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("pass", "fail", "error", "timeout", "memory", "killed", "blocked")


@dataclass
class Job:
    code: str
    # asserts, or a HumanEval ``check(candidate)``: decomposed into calls the program's process
    # evaluates and comparisons made outside it; what cannot be decomposed runs in driver mode
    tests: str | None = None
    entry_point: str | None = None
    # an expression whose value is reported (e.g. ``solution()``)
    call: str | None = None
    timeout_s: float = 5.0
    # CodeT: each test separately; the value is a pass/fail list
    test_list: list[str] | None = None
    per_test_timeout_s: float | None = None
    # the benchmark's own code (HumanEval's prompt): its helpers are trusted in driver mode
    prompt: str | None = None
    # is the test code itself trusted (a benchmark's)? Driver-mode verdicts are trusted only then
    tests_trusted: bool = False
    # "verify": the program must be plain (synthflow.sandbox.policy) and its functions under test the
    # ones its defs make; "none": isolation only (for tests of the sandbox itself)
    policy: str = "verify"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    status: str
    exc_type: str = ""
    message: str = ""
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    value: Any = None
    value_repr: str = ""
    mode: str = ""
    # decided outside the program's reach: by comparisons in the host (decomposed tests, values)
    # or by a driver process running trusted tests
    trusted: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
