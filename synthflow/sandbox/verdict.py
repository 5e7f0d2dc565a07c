"""Verdicts and jobs shared by every executor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("pass", "fail", "error", "timeout", "memory", "killed", "blocked")


@dataclass
class Job:
    code: str
    tests: str | None = None
    entry_point: str | None = None
    call: str | None = None
    timeout_s: float = 5.0
    # CodeT: run each test separately and report a pass/fail list as the value
    test_list: list[str] | None = None
    per_test_timeout_s: float | None = None

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
