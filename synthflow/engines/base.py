"""Engine contract: all prompts of a batch go to the engine in one call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Request:
    """A chat conversation. When the last message is the assistant's, the engine continues it
    (prefill: the answer starts with that text) and returns only the continuation."""

    messages: list[dict[str, str]]
    sample_index: int = 0
    json_schema: dict[str, Any] | None = None

    @property
    def prefill(self) -> str:
        last = self.messages[-1] if self.messages else None
        return last["content"] if last and last["role"] == "assistant" else ""


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str
    model_id: str  # what goes into provenance and cache keys

    def start(self) -> None:
        """Load or connect; raise EngineUnavailable (one line) when that fails."""

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        """One call for the whole batch; results in request order."""

    def close(self) -> None: ...


def share_seconds(completions: list[Completion], total: float) -> None:
    """Split a batch call's wall time over its rows in proportion to their completion tokens."""
    tokens = sum(c.completion_tokens for c in completions) or len(completions) or 1
    for c in completions:
        c.seconds = total * (c.completion_tokens or (1 if not tokens else 0)) / tokens
