"""IFD: Instruction-Following Difficulty (Cherry-LLM, Li et al. 2023; Superfiltering, Li et al. 2024).

``IFD = loss(response | instruction) / loss(response)``, each the mean token cross-entropy of the
response: once after the instruction in the chat template, once after an empty user turn. Both come
from prompt logprobs of the ``scorer_model`` engine (default: the embedded model, whatever model
generated; Superfiltering showed a small model's IFD ranks data like a large one's), in one batched
engine call per batch. IFD near 1 or above means the instruction does not help predict the response:
they do not belong together. IFD says nothing about correctness, and a response that parrots its
instruction gets a very low IFD: the ``echo`` heuristic is the check for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from synthflow.errors import UserError
from synthflow.record import Record
from synthflow.registry import register
from synthflow.scoring import EngineScorerParams, Scorer, instruction_response


class IFDParams(EngineScorerParams):
    max_response_tokens: int = Field(512, gt=0, description="response tokens scored (the rest is cut)")
    max_instruction_chars: int = Field(4000, gt=0, description="longer instructions are cut")


def mean_loss(logprobs: list[float | None], n: int) -> float:
    """Mean negative logprob of the last ``n`` tokens."""
    tail = [v for v in logprobs[len(logprobs) - n :] if v is not None]
    return -sum(tail) / len(tail) if tail else float("nan")


@register("scorer", "ifd")
class IFD(Scorer):
    name = "ifd"
    Params = IFDParams
    outputs = ("ifd", "response_loss")
    role = "scorer_model"

    def default_engine(self) -> Any:
        from synthflow.recipe import EngineConfig

        return EngineConfig(name="vllm", model="default")

    def preflight(self) -> None:
        super().preflight()
        self._check(self.engine())

    def _check(self, eng: Any) -> None:
        if not eng.supports_logprobs():
            raise UserError(
                f"{self.ctx.where}.ifd.engine: engine {eng.name!r} gives no prompt logprobs; "
                "use the vllm engine (the default: the embedded model)"
            )

    def score(self, records: Sequence[Record]) -> None:
        eng = self.engine()
        self._check(eng)
        p = self.params
        prompts: list[list[int]] = []
        spans: list[tuple[Record, int]] = []
        empty_prefix = eng.chat_ids([{"role": "user", "content": ""}])
        for r in records:
            instr, resp = instruction_response(r)
            r.scores["ifd"] = r.scores["response_loss"] = None
            if not instr.strip() or not resp.strip():
                continue
            prefix = eng.chat_ids([{"role": "user", "content": instr[: p.max_instruction_chars]}])
            room = eng.max_model_len - max(len(prefix), len(empty_prefix)) - 1
            rids = eng.encode(resp)[: min(p.max_response_tokens, room)]
            if not rids:
                continue
            prompts += [prefix + rids, empty_prefix + rids]
            spans.append((r, len(rids)))
        if not prompts:
            return
        lps = eng.prompt_logprobs(prompts)  # conditioned and unconditioned, one call for the batch
        for k, (r, n) in enumerate(spans):
            cond, uncond = mean_loss(lps[2 * k], n), mean_loss(lps[2 * k + 1], n)
            if cond != cond or uncond != uncond or uncond <= 0:
                continue
            r.scores["response_loss"] = round(cond, 6)
            r.scores["ifd"] = round(cond / uncond, 6)
