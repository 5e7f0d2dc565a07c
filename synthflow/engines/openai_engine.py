"""OpenAI-compatible HTTP engine (``vllm serve`` or any compatible endpoint).

Async with bounded concurrency, retries with exponential backoff and per-request timeouts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from typing import Any

import httpx

from synthflow.engines.base import Completion, Request, Sampling
from synthflow.errors import EngineUnavailable

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        request_seed: bool = False,
        show_progress: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.request_seed = request_seed
        self.show_progress = show_progress
        self._checked = False

    @property
    def model_id(self) -> str:
        return self.model or "?"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> None:
        """Check the endpoint answers, and pick its first model when none was named."""
        if self._checked:
            return
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=10)
            r.raise_for_status()
            models = [m["id"] for m in r.json().get("data", [])]
        except httpx.HTTPStatusError as e:
            raise EngineUnavailable(
                f"engine openai at {self.base_url}: GET /models answered {e.response.status_code}"
            ) from None
        except (httpx.HTTPError, ValueError) as e:
            raise EngineUnavailable(f"engine openai at {self.base_url} is not reachable: {e}") from None
        if not self.model:
            if not models:
                raise EngineUnavailable(f"engine openai at {self.base_url}: serves no models; pass --model")
            self.model = models[0]
        self._checked = True

    def preflight(self) -> None:
        """Before a run starts: the endpoint lists its models (``start``) and answers one real chat
        call (one token) with a well-formed reply, so a server that lists models but fails every
        chat call is one line now, not a failure after the flow started."""
        self.start()
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1,
                "temperature": 0.0}  # fmt: skip
        where = f"engine openai at {self.base_url}: a test chat call to model {self.model!r}"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                r = httpx.post(f"{self.base_url}/chat/completions", json=body, headers=self._headers(),
                               timeout=min(self.timeout_s, 60.0))  # fmt: skip
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code not in RETRY_STATUS:
                    if r.status_code >= 400:
                        raise EngineUnavailable(f"{where} answered HTTP {r.status_code}: {r.text[:200]}")
                    try:
                        data = r.json()
                        data["choices"][0]["message"]
                        return
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise EngineUnavailable(
                            f"{where} answered without choices[0].message (not an OpenAI chat reply): "
                            f"{r.text[:120]!r}"
                        ) from None
                last = f"HTTP {r.status_code}"
            time.sleep(self.backoff_s * (2**attempt))
        raise EngineUnavailable(f"{where} failed after {self.max_retries + 1} tries ({last})")

    def _body(self, req: Request, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if req.prefill:  # vLLM's server continues a final assistant message with these flags
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if self.request_seed:
            body["seed"] = sampling.seed * 1_000_003 + req.sample_index
        if req.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "row", "schema": req.json_schema},
            }
        return body

    async def _one(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, body: dict[str, Any]
    ) -> Completion:
        last = ""
        for attempt in range(self.max_retries + 1):
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{self.base_url}/chat/completions", json=body)
                    if r.status_code in RETRY_STATUS:
                        last = f"HTTP {r.status_code}"
                    elif r.status_code >= 400:
                        raise EngineUnavailable(
                            f"engine openai at {self.base_url}: HTTP {r.status_code}: {r.text[:200]}"
                        )
                    else:
                        data = r.json()
                        choice = data["choices"][0]
                        usage = data.get("usage") or {}
                        return Completion(
                            text=choice["message"].get("content") or "",
                            finish_reason=choice.get("finish_reason") or "",
                            prompt_tokens=int(usage.get("prompt_tokens") or 0),
                            completion_tokens=int(usage.get("completion_tokens") or 0),
                            seconds=time.perf_counter() - t0,
                        )
                except httpx.HTTPError as e:
                    last = f"{type(e).__name__}: {e}"
                except (KeyError, IndexError, ValueError) as e:
                    last = f"malformed response: {e}"
            await asyncio.sleep(self.backoff_s * (2**attempt) * (0.5 + random.random()))
        raise EngineUnavailable(
            f"engine openai at {self.base_url}: gave up after {self.max_retries + 1} tries ({last})"
        )

    async def _run(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        sem = asyncio.Semaphore(self.concurrency)
        timeout = httpx.Timeout(self.timeout_s, connect=10.0)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers()) as client:
            tasks = [asyncio.create_task(self._one(client, sem, self._body(r, sampling))) for r in requests]
            bar = None
            if self.show_progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(tasks), desc="generate", unit="req", leave=False)
                for t in tasks:
                    t.add_done_callback(lambda _t: bar.update(1))
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                if bar is not None:
                    bar.close()

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        self.start()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run(requests, sampling))
        # Called from inside an event loop (e.g. an async caller): run in a helper thread.
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, self._run(requests, sampling)).result()

    def close(self) -> None:
        pass
