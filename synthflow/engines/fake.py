"""A scripted engine FOR TESTS ONLY. It is never a default; recipes must name it explicitly.

The script is a list of rules ``{"match": <regex over the last user message>, "reply": <text>}``;
replies may use ``{i}`` (sample index) and ``{n}`` (call counter) and may be a list, indexed by sample.
When the conversation ends with an assistant prefill that the reply starts with, only the rest is returned.
The first matching rule answers; ``"scope": "all"`` matches the whole conversation
(``<role> content`` lines) instead of the last user message; ``"finish_reason": "length"`` makes the
reply look cut at max_tokens. ``delay_s`` sleeps per call so tests can kill a run mid-generation;
``fail_call: N`` raises once, on the N-th call, so tests can make a task fail and be retried; with
``kill_file`` it SIGKILLs its process on that call instead, once (the file marks that it happened).
``wait_file``: every call waits until that file exists, and says it waits in ``<wait_file>.<pid>`` (a
test lines up processes with it).

For token-level scorers it is a "copy model" over whitespace words: a token seen earlier in the
sequence has logprob ``seen_logprob`` (-0.5), any other ``unseen_logprob`` (-3.0), so a test can
compute IFD by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from synthflow.engines.base import Completion, Request, Sampling


class FakeEngine:
    name = "fake"

    def __init__(
        self,
        script: list[dict[str, Any]] | str | Path,
        model_id: str = "fake-model",
        delay_s: float = 0.0,
        fail_call: int = 0,
        kill_file: str | None = None,
        wait_file: str | None = None,
    ):
        if isinstance(script, (str, Path)):
            script = json.loads(Path(script).read_text())
        self.rules = [
            (
                re.compile(r.get("match", ""), re.S),
                r["reply"],
                r.get("scope", "last_user"),
                r.get("finish_reason", "stop"),
            )
            for r in script
        ]
        self.samplings: list[Sampling] = []  # the sampling of every call, for tests
        self.model_id = model_id
        self.delay_s = delay_s
        self.fail_call = fail_call
        self.kill_file = kill_file
        self.wait_file = wait_file
        self.calls = 0
        self.requests: list[Request] = []  # every request seen, for tests that check what was asked
        self.prompts_seen = 0
        self.logprob_calls = 0
        self.max_model_len = 4096
        self.seen_logprob = -0.5
        self.unseen_logprob = -3.0

    def start(self) -> None:
        pass

    def preflight(self) -> None:
        pass

    def _answer(self, req: Request) -> tuple[str, str]:
        last_user = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
        everything = "\n".join(f"<{m['role']}> {m['content']}" for m in req.messages)
        for rx, reply, scope, finish in self.rules:
            if rx.search(everything if scope == "all" else last_user):
                if isinstance(reply, list):
                    reply = reply[req.sample_index % len(reply)]
                return reply.replace("{i}", str(req.sample_index)).replace("{n}", str(self.calls)), finish
        return "", "stop"

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        self.calls += 1
        if self.wait_file and not os.path.exists(self.wait_file):
            Path(f"{self.wait_file}.{os.getpid()}").touch()
            while not os.path.exists(self.wait_file):
                time.sleep(0.05)
        if self.calls == self.fail_call and self.kill_file:
            if not os.path.exists(self.kill_file):  # once: the retry of the killed process goes on
                Path(self.kill_file).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        elif self.calls == self.fail_call:
            raise RuntimeError(f"fake engine: scripted failure on call {self.calls}")
        self.prompts_seen += len(requests)
        self.requests.extend(requests)
        self.samplings.append(sampling)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for r in requests:
            text, finish = self._answer(r)
            if r.prefill and text.startswith(r.prefill):  # like a real engine: only the continuation
                text = text[len(r.prefill) :]
            out.append(
                Completion(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=sum(len(m["content"].split()) for m in r.messages),
                    completion_tokens=len(text.split()),
                    seconds=0.0,
                )
            )
        return out

    # ---- token-level scoring: a deterministic copy model ----------------------------------
    SPECIAL = {"bos": 1, "system": 2, "user": 3, "assistant": 4, "end": 5}

    def encode(self, text: str) -> list[int]:
        return [16 + int(hashlib.md5(w.encode()).hexdigest()[:6], 16) for w in text.split()]

    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        ids = [self.SPECIAL["bos"]]
        for m in messages:
            ids += [self.SPECIAL[m["role"]], *self.encode(m["content"]), self.SPECIAL["end"]]
        if add_generation_prompt:
            ids.append(self.SPECIAL["assistant"])
        return ids

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        self.logprob_calls += 1
        out = []
        for ids in prompts:
            seen: set[int] = set()
            lps: list[float | None] = []
            for i, t in enumerate(ids):
                if i == 0:
                    lps.append(None)
                elif t < 16:
                    lps.append(0.0)
                else:
                    lps.append(self.seen_logprob if t in seen else self.unseen_logprob)
                if t >= 16:
                    seen.add(t)
            out.append(lps)
        return out

    def close(self) -> None:
        pass
