"""Engines: in-process vLLM, OpenAI-compatible HTTP, and a scripted fake for tests."""

from __future__ import annotations

import os
from typing import Any

from synthflow.errors import UserError
from synthflow.registry import register


@register("engine", "vllm")
def make_vllm(cfg: Any) -> Any:
    from synthflow.engines.vllm_engine import VLLMEngine
    from synthflow.model import DEFAULT_MODEL_NAME, resolve_model

    path = resolve_model(cfg.model)
    model_id = DEFAULT_MODEL_NAME if cfg.model in ("default", "", DEFAULT_MODEL_NAME) else cfg.model
    return VLLMEngine(
        model=path,
        model_id=model_id,
        max_model_len=cfg.max_model_len,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        seed=cfg.seed,
        enforce_eager=cfg.enforce_eager,
        dtype=cfg.dtype,
        show_progress=os.environ.get("SYNTHFLOW_PROGRESS", "1") != "0",
        extra=cfg.vllm_args,
    )


@register("engine", "openai")
def make_openai(cfg: Any) -> Any:
    from synthflow.engines.openai_engine import OpenAIEngine

    if not cfg.base_url:
        raise UserError(
            "field engine.base_url: the openai engine needs a base URL (e.g. http://127.0.0.1:8000/v1)"
        )
    return OpenAIEngine(
        base_url=cfg.base_url,
        model=None if cfg.model in ("default", "") else cfg.model,
        api_key=os.environ.get(cfg.api_key_env),
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        show_progress=os.environ.get("SYNTHFLOW_PROGRESS", "1") != "0",
    )


@register("engine", "fake")
def make_fake(cfg: Any) -> Any:
    """Tests only: answers from ``engine.script`` (a JSON rules file)."""
    from synthflow.engines.fake import FakeEngine

    if not cfg.script:
        raise UserError("field engine.script: the fake engine (tests only) needs a script file")
    if not os.path.isfile(cfg.script):
        raise UserError(f"{cfg.script}: fake engine script not found")
    model_id = (
        cfg.model if cfg.model not in ("", "default") else "fake-model"
    )  # a named fake is its own model
    return FakeEngine(
        cfg.script, model_id=model_id, delay_s=cfg.delay_s, fail_call=cfg.fail_call, kill_file=cfg.kill_file
    )
