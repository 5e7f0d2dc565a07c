"""Engines: in-process vLLM, OpenAI-compatible HTTP, and a scripted fake for tests."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class FakeOptions(BaseModel):
    """``engine.options`` of the scripted engine (tests only)."""

    model_config = ConfigDict(extra="forbid")
    script: str
    delay_s: float = Field(0.0, ge=0)
    fail_call: int = Field(0, ge=0, description="raise once on this call (1-based); 0 never")
    kill_file: str | None = Field(
        None, description="on call fail_call, SIGKILL the process instead, once (this file marks it)"
    )
    wait_file: str | None = Field(None, description="every call waits until this file exists")


@register("engine", "fake")
def make_fake(cfg: Any) -> Any:
    """Tests only: answers from ``engine.options.script`` (a JSON rules file)."""
    from synthflow.engines.fake import FakeEngine
    from synthflow.registry import validate_model

    if not cfg.options.get("script"):
        raise UserError("field engine.options.script: the fake engine (tests only) needs a script file")
    o = validate_model(FakeOptions, cfg.options, "field engine.options")
    if not os.path.isfile(o.script):
        raise UserError(f"{o.script}: fake engine script not found")
    model_id = (
        cfg.model if cfg.model not in ("", "default") else "fake-model"
    )  # a named fake is its own model
    return FakeEngine(
        o.script, model_id=model_id, delay_s=o.delay_s, fail_call=o.fail_call, kill_file=o.kill_file,
        wait_file=o.wait_file,
    )  # fmt: skip
