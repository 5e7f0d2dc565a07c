"""Generator contract: templates plus a parser with declared fields.

A generator turns planned work items into records (one engine call per batch per step) and rejects
what does not parse, with reason ``parse:<what>``. It declares its output fields as typed Parquet
columns so DuckDB can query them.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from synthflow.engines.base import Completion, Request, Sampling
from synthflow.personas import load_personas, persona_for
from synthflow.prompts import Prompt, load_prompt
from synthflow.record import Record, Reject, StageResult, finish_reason, stable_id  # noqa: F401 - finish_reason: re-exported
from synthflow.registry import validate_model
from synthflow.seeds import Seed


class ParseError(ValueError):
    """``ParseError("no_program")`` becomes the reject reason ``parse:no_program``."""


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Item:
    """One planned generation: the ``index``-th item of the run."""

    index: int
    seed: Seed
    sample: int


class Generator(ABC):
    name: ClassVar[str] = ""
    # prompt role -> default template under prompts/
    prompts: ClassVar[dict[str, str]] = {}
    Options: ClassVar[type[BaseModel]] = NoOptions
    # declared output fields -> Parquet types (become typed columns)
    columns: ClassVar[dict[str, pa.DataType]] = {}
    # JSON schema for structured outputs, by prompt role
    schemas: ClassVar[dict[str, dict[str, Any]]] = {}
    # the record field that dedup and decontamination look at by default
    text_field: ClassVar[str] = "messages"
    # per prompt role, sampling that differs from the recipe's ``sampling`` (e.g. greedy and short
    # for a yes/no step, a larger budget for responses); the recipe's ``generator.sampling`` overrides
    step_sampling: ClassVar[dict[str, dict[str, Any]]] = {}
    # roles whose output may be cut at max_tokens because the generator copes (drops the cut tail, or
    # counts a cut sample as a failed vote); their cut steps are recorded as ``length:handled``
    truncation_ok: ClassVar[frozenset[str]] = frozenset()
    # attributes that ``generate`` changes (e.g. Self-Instruct's pool and rounds): checkpointed
    # before each batch, so a retried or discarded batch starts from the same state
    state_attrs: ClassVar[tuple[str, ...]] = ()
    # False when a batch's prompts depend on the rows of earlier batches (Self-Instruct's pool):
    # such a recipe cannot be split into shards that generate at the same time
    shardable: ClassVar[bool] = True
    # generators with a ``personas`` option: the template each such role switches to when personas
    # are on (unless the recipe names another one for the role)
    persona_prompts: ClassVar[dict[str, str]] = {}
    # CoachLM-style revision (recipe ``revise``): the template, and the field that holds the
    # assistant's answer (None: this generator's rows cannot be revised)
    revise_prompt: ClassVar[str] = "revise/coach.jinja2"
    response_field: ClassVar[str | None] = None
    # the fields the training conversation is rendered from (``messages``): a later step that sets
    # one of them (a verifier choosing CodeT's solution) has the conversation rendered again
    message_fields: ClassVar[frozenset[str]] = frozenset()
    # the seed fields this generator reads its input from (any one, non-empty, per seed): a seed
    # without any of them is an error before the run starts, not an empty prompt
    seed_fields: ClassVar[tuple[str, ...]] = ("text", "instruction", "problem")

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        self.recipe = recipe
        self.seeds = seeds
        self.opts: Any = self.validate_options(recipe.generator.options, "generator.options")
        persona_file = getattr(self.opts, "personas", None)
        self.personas: list[str] = load_personas(persona_file) if persona_file else []
        chosen = dict(recipe.generator.prompts)
        for role, tmpl in self.persona_prompts.items():
            if self.personas and chosen.get(role, self.prompts[role]) == self.prompts[role]:
                chosen[role] = tmpl
        self.templates: dict[str, Prompt] = {
            role: load_prompt(chosen.get(role, default)) for role, default in self.prompts.items()
        }
        rng = random.Random(f"{recipe.seed}:{recipe.name}")
        self._order = list(range(len(seeds)))
        rng.shuffle(self._order)
        self.structured = bool(recipe.engine.structured_outputs)
        self.run_id = run_id  # row ids are unique per run and stable when it resumes

    @classmethod
    def validate_options(cls, options: dict[str, Any], where: str) -> Any:
        return validate_model(cls.Options, options, where)

    # ---- planning -------------------------------------------------------------------------
    def plan(self, start: int, count: int) -> list[Item]:
        """Deterministic: item i always maps to the same seed and sample index."""
        s = len(self.seeds)
        return [Item(i, self.seeds[self._order[i % s]], i // s) for i in range(start, start + count)]

    # ---- helpers ----------------------------------------------------------------------------
    def persona(self, item: Item) -> str | None:
        """The persona item ``item`` draws (None when the recipe uses none)."""
        return persona_for(self.personas, self.recipe.seed, item.index) if self.personas else None

    def sampling_for(self, role: str, base: Sampling) -> Sampling:
        """The sampling of one step: the recipe's, then the step's default, then the recipe's override."""
        over = {**self.step_sampling.get(role, {}), **(self.recipe.generator.sampling.get(role) or {})}
        if "stop" in over:
            over["stop"] = tuple(over["stop"] or ())
        return dataclasses.replace(base, **over) if over else base

    def call(self, engine: Any, role: str, reqs: list[Request], sampling: Sampling) -> list[Completion]:
        """One engine call for the batch with the step's sampling; each completion knows its step."""
        if not reqs:
            return []
        s = self.sampling_for(role, sampling)
        comps = engine.generate(reqs, s)
        for c in comps:
            c.extra["step"] = step_entry(role, c, s)
            if c.finish_reason == "length" and role in self.truncation_ok:
                c.extra["step"]["finish_reason"] = "length:handled"
        return comps

    def request(self, role: str, messages: list[dict[str, str]], sample: int) -> Request:
        schema = self.schemas.get(role) if self.structured else None
        if schema is not None and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # structured output replaces the text prefill
        return Request(messages=messages, sample_index=sample, json_schema=schema)

    def new_record(self, item: Item, role: str, comp: Completion, engine: Any, sampling: Sampling) -> Record:
        tmpl = self.templates[role]
        return Record(
            id=stable_id(
                self.run_id, self.recipe.name, self.name, item.seed.seed_id, item.index, self.recipe.seed
            ),
            recipe=self.recipe.name,
            generator=self.name,
            seed_id=item.seed.seed_id,
            item=item.index,
            prompt_template=tmpl.name,
            prompt_version=tmpl.version,
            raw=comp.text,
            gen=gen_provenance(comp, engine, sampling, tmpl),
        )

    # ---- the work ---------------------------------------------------------------------------
    def run(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        """``generate``, then reject every row one of whose steps was cut at max_tokens
        (``parse:truncated:<step>``), unless the generator handled that step's truncation itself."""
        res = self.generate(items, engine, sampling)
        kept = []
        for r in res.kept:
            cut = next(
                (st["step"] for st in r.gen.get("steps") or [] if st["finish_reason"] == "length"), None
            )
            if cut is not None:
                res.rejects.append(Reject(r, "parse", f"parse:truncated:{cut}"))
            else:
                kept.append(r)
        res.kept = kept
        return res

    @abstractmethod
    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        """Render, call the engine once per step for the whole batch, parse; parse failures are rejects."""

    def render_examples(self) -> list[list[dict[str, str]]]:
        """Rendered prompts for the first planned items (contract tests and ``--dry-run``)."""
        return [
            self.templates[role].render(**self.context(it))
            for it in self.plan(0, 2)
            for role in self.templates
        ]

    def context(self, item: Item) -> dict[str, Any]:
        """Template variables for one item (single-template generators)."""
        return {"seed": item.seed.data}

    def checkpoint(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self.state_attrs}

    def restore(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, copy.deepcopy(v))

    def answer_task(self, fields: dict[str, Any]) -> Any:
        """What a row asks and answers (``synthflow.answers.AnswerTask``), for the independent answer
        check; None when the row has nothing such a check can decide (the default)."""
        return None

    def messages(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        """The training conversation rendered from ``fields`` (generators with ``message_fields``)."""
        raise NotImplementedError(f"generator {self.name} renders no messages from its fields")

    def bind_engines(self, pool: Any, where: str) -> None:
        """Engines of roles of its own, besides the recipe's (an ensemble's members), from the run's
        engine pool: the one place engines come from."""

    def revision_context(self, rec: Record) -> dict[str, Any]:
        """Template variables of a revision: the pair as the model will be trained on it."""
        user = "\n\n".join(m["content"] for m in rec.messages if m["role"] == "user")
        answer = next((m["content"] for m in reversed(rec.messages) if m["role"] == "assistant"), "")
        return {"instruction": user, "response": answer}

    def apply_revision(self, rec: Record, text: str) -> None:
        """Put a revision into the row (its fields and messages), or raise ParseError."""
        resp = text.strip()
        if not resp:
            raise ParseError("empty")
        if resp == self.revision_context(rec)["response"].strip():
            raise ParseError("unchanged")
        assert self.response_field is not None
        rec.fields[self.response_field] = resp
        rec.messages = [*rec.messages[:-1], {"role": "assistant", "content": resp}]

    def after_revision(self, recs: list[Record], engine: Any, sampling: Sampling) -> None:
        """Once per revision round, over the revised rows (e.g. new self-consistency samples)."""

    def prepare(self, engine: Any, sampling: Sampling) -> None:
        """Once per run, before the first batch (e.g. SkillMix's skill extraction)."""

    def summary(self, accepted: list[Record]) -> dict[str, Any]:
        """Generator-specific lines for the run summary (coverage, rounds, ...)."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """Files to save with the run (name -> JSON-able object)."""
        return {}

    def generation_engines(self) -> list[Any]:
        """Engines (by role) that generate rows besides the recipe's engine, e.g. ensemble members:
        the run's token and engine-time totals include them."""
        return []


def step_entry(role: str, comp: Completion, s: Sampling) -> dict[str, Any]:
    return {
        "step": role,
        "finish_reason": comp.finish_reason,
        "temperature": s.temperature,
        "max_tokens": s.max_tokens,
    }


def gen_provenance(comp: Completion, engine: Any, sampling: Sampling, tmpl: Prompt) -> dict[str, Any]:
    step = comp.extra.get("step") or step_entry("", comp, sampling)
    return {
        "engine": engine.name,
        "model": engine.model_id,
        "sampling": sampling.as_dict(),
        "prompt_tokens": comp.prompt_tokens,
        "completion_tokens": comp.completion_tokens,
        "engine_seconds": comp.seconds,
        "cache_hit": comp.cached,
        "steps": [dict(step)],
        "prompt_sha": tmpl.sha,
    }


def add_usage(rec: Record, comp: Completion) -> None:
    """Fold a further engine call (multi-step generators) into the record's token counts and steps."""
    g = rec.gen
    g["prompt_tokens"] = g.get("prompt_tokens", 0) + comp.prompt_tokens
    g["completion_tokens"] = g.get("completion_tokens", 0) + comp.completion_tokens
    g["engine_seconds"] = g.get("engine_seconds", 0.0) + comp.seconds
    g["cache_hit"] = bool(g.get("cache_hit", True)) and comp.cached
    step = comp.extra.get("step")
    if step is not None:
        g.setdefault("steps", []).append(dict(step))


def parse_or_reject(
    rec: Record, parser: Any, text: str, result: StageResult, stage: str = "parse"
) -> dict[str, Any] | None:
    try:
        return parser(text)
    except ParseError as e:
        result.rejects.append(Reject(rec, stage, f"parse:{e}"))
        return None
