"""Recipes: declarative YAML validated by pydantic. Names refer to registered components."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthflow import registry
from synthflow.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Strict):
    name: str = "vllm"
    model: str = "default"
    # in-process vLLM
    max_model_len: int = Field(2048, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    seed: int = 0
    enforce_eager: bool | None = None
    dtype: str = "auto"
    vllm_args: dict[str, Any] = Field(default_factory=dict)
    # OpenAI-compatible HTTP
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(32, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)
    # the report's cost: money per million tokens of an endpoint, e.g. {prompt: 0.15, completion: 0.6}
    price_per_mtok: dict[Literal["prompt", "completion"], float] | None = None
    # structured outputs (JSON schema) where the generator declares one
    structured_outputs: bool = False
    # settings of a particular engine, validated by it (the scripted test engine's script)
    options: dict[str, Any] = Field(default_factory=dict)


class SamplingConfig(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    stop: list[str] = Field(default_factory=list)


class SeedSourceConfig(_Strict):
    source: str
    path: str = ""  # a file, or builtin:<name> (sources that read files)
    split: str | None = None  # the gsm8k source: train (the test split is for decontamination)
    field: str | None = None
    limit: int | None = Field(None, gt=0)
    chunk_words: int = Field(200, gt=0)


class StepSampling(_Strict):
    """Sampling of one generator step (prompt role); unset fields keep the step's default."""

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    stop: list[str] | None = None


class GeneratorConfig(_Strict):
    name: str
    prompts: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    # per-step sampling overrides, by prompt role: {classify: {temperature: 0, max_tokens: 8}}
    sampling: dict[str, StepSampling] = Field(default_factory=dict)

    @field_validator("sampling", mode="after")
    @classmethod
    def _drop_unset(cls, v: dict[str, StepSampling]) -> dict[str, Any]:
        return {role: s.model_dump(exclude_none=True) for role, s in v.items()}


class FilterConfig(BaseModel):
    """``{name: <registered filter>, ...params}``; params are validated by the filter itself."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OutputConfig(_Strict):
    root: str = "out"
    shard_rows: int = Field(10_000, gt=0)
    target_tokenizer: str | None = Field(
        None,
        description="tokenizer (folder or HF id) whose chat template renders each row for n_tokens; "
        "default: the generating model's (the embedded model's for endpoints)",
    )
    max_seq_len: int | None = Field(
        None, gt=0, description="rows longer than this are sft:too_long (default: engine.max_model_len)"
    )


class ReviseConfig(_Strict):
    """CoachLM-style revision: rows rejected for a fixable reason are rewritten and checked again."""

    rounds: int = Field(
        1, ge=1, le=3, description="revision rounds (a revised row that fails again may be revised again)"
    )
    # reject reasons (prefixes) worth a revision: a low judge score, a shirking answer, a failed check
    reasons: list[str] = Field(default_factory=lambda: ["quality:judge", "shirker:", "verify:"], min_length=1)
    prompt: str | None = Field(None, description="revision template (default: the generator's)")


class Recipe(_Strict):
    name: str
    description: str = ""
    license: str = "apache-2.0"
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    generator: GeneratorConfig
    seeds: list[SeedSourceConfig] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    n: int = Field(50, gt=0, description="accepted rows to produce")
    batch_size: int = Field(64, gt=0, description="records per engine call and per task")
    max_items: int | None = Field(None, gt=0, description="generation budget; default 10 x n")
    seed: int = 0
    filters: list[FilterConfig] = Field(default_factory=list)
    # the score step: registered scorer -> its params, in order (``sklearn:DIR`` passes DIR)
    scoring: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {"heuristics": {}})
    output: OutputConfig = Field(default_factory=OutputConfig)
    revise: ReviseConfig | None = None
    pipeline: bool = Field(
        True, description="generate the next batch while the previous one is verified, deduped and scored"
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("use letters, digits, - and _ only")
        return v

    @property
    def budget(self) -> int:
        return self.max_items or 10 * self.n

    def fingerprint(self) -> str:
        """Hash of everything that decides the rows (not the output root). A scorer model counts by
        its content, not its path."""
        d = self.model_dump(mode="json")
        out = d.pop("output", None) or {}
        if out.get("target_tokenizer") or out.get("max_seq_len"):  # they decide which rows pass
            d["sft"] = [out.get("target_tokenizer"), out.get("max_seq_len")]
        d.pop("pipeline", None)  # how the run is scheduled, not what it makes
        if d.get("revise") is None:  # unset, it changes nothing (earlier runs keep their fingerprint)
            d.pop("revise", None)
        if not d["engine"].get("options"):  # unset, it changes nothing (earlier fingerprints stay)
            d["engine"].pop("options", None)
        d["engine"].pop("price_per_mtok", None)  # what rows cost, not what they are
        for src in d.get("seeds") or []:  # unset, they change nothing (earlier fingerprints stay)
            if src.get("split") is None:
                src.pop("split", None)
        parts = [registry.component("scorer", spec, p, f"scoring.{spec}") for spec, p in self.scoring.items()]
        d["scoring"] = [[cls.name, cls.fingerprint_part(params)] for cls, params in parts]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean on unknown fields)."""
    model: Any = Recipe
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        f = model.model_fields.get(p) if hasattr(model, "model_fields") else None
        if f is None:
            return None
        ann = f.annotation
        args = getattr(ann, "__args__", ())
        cand = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return None
        model = cand[0]
    return model


def format_validation_error(path: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = e.get("loc", ())
    where = _loc(loc) or "(top level)"
    msg = e.get("msg", "invalid")
    if e.get("type") == "extra_forbidden":
        model = _model_at(loc)
        hint = (
            f"; {registry.did_you_mean(str(loc[-1]), list(model.model_fields))}" if model is not None else ""
        )
        return f"{path}: field {where}: unknown field{hint}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: field {where}: {msg}{more}"


# the shipped recipes (``recipes/``), package data: ``synthflow/_recipes`` links to them in a checkout
# and holds a copy in an installed wheel
SHIPPED_RECIPES = Path(__file__).resolve().parent / "_recipes"


def resolve_recipe_name(name: str) -> Path:
    """A recipe given by name (``math``): ``recipes/<name>.yaml`` under the current folder, else the
    shipped recipe of that name, from any folder; else one line with the closest shipped name."""
    for folder in (Path("recipes"), SHIPPED_RECIPES):
        alt = folder / f"{name}.yaml"
        if "/" not in name and not name.endswith((".yaml", ".yml")) and alt.is_file():
            return alt
    bare = "/" not in name and not name.endswith((".yaml", ".yml"))
    names = sorted(q.stem for q in SHIPPED_RECIPES.glob("*.yaml"))
    hint = registry.did_you_mean(name, names) if bare and names else ""  # a path is named as given
    raise UserError(f"{name}: recipe file not found" + (f"; {hint}" if hint else ""))


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, validate and resolve a recipe; every problem is one UserError line naming file and field."""
    p = Path(path)
    if not p.is_file():
        p = resolve_recipe_name(str(path))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start}); a recipe is a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a YAML mapping, got {type(data).__name__}")
    for key, val in (overrides or {}).items():
        if val is None:
            continue
        cur = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if cur.get(part) is None:
                cur[part] = {}
            cur = cur[part]
            if not isinstance(cur, dict):
                raise UserError(f"{p}: cannot set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
        cur[parts[-1]] = val
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(str(p), e)) from None
    check_names(recipe, str(p))
    check_fields(recipe, str(p))
    return recipe


def check_names(recipe: Recipe, where: str) -> None:
    """Resolve every registered name now, so a typo fails before any work starts."""
    gen_cls = registry.get("generator", recipe.generator.name, f"{where}: field generator.name")
    gen_cls.validate_options(recipe.generator.options, f"{where}: field generator.options")
    for role in recipe.generator.sampling:
        if role not in gen_cls.prompts:
            raise UserError(
                f"{where}: field generator.sampling.{role}: unknown step; "
                f"{registry.did_you_mean(role, sorted(gen_cls.prompts))}"
            )
    for role, tmpl in recipe.generator.prompts.items():
        if role not in gen_cls.prompts:
            raise UserError(
                f"{where}: field generator.prompts.{role}: unknown prompt role; "
                f"{registry.did_you_mean(role, sorted(gen_cls.prompts))}"
            )
        from synthflow.prompts import load_prompt

        try:
            load_prompt(tmpl)
        except UserError as e:
            raise UserError(f"{where}: field generator.prompts.{role}: {e}") from None
    registry.get("engine", recipe.engine.name, f"{where}: field engine.name")
    for i, s in enumerate(recipe.seeds):
        registry.get("seed_source", s.source, f"{where}: field seeds[{i}].source")
    for i, f in enumerate(recipe.filters):
        cls = registry.get("filter", f.name, f"{where}: field filters[{i}].name")
        cls.validate_params(f.params, f"{where}: field filters[{i}]")
    seen: dict[str, str] = {}
    for spec, params in recipe.scoring.items():
        cls, _ = registry.component("scorer", spec, params, f"{where}: field scoring.{spec}")
        if cls.name in seen:
            raise UserError(
                f"{where}: field scoring.{spec}: scorer {cls.name!r} is named twice ({seen[cls.name]!r})"
            )
        seen[cls.name] = spec


def check_fields(recipe: Recipe, where: str) -> None:
    """The components fit together: each reads only fields that the generator, or a component
    before it on the data's way, writes. A verifier that needs ``tests`` after a generator that
    writes none fails here, with one line, rather than on the first batch."""
    from synthflow.filtering import STEPS, step_of

    gen = registry.get("generator", recipe.generator.name)
    parts: list[tuple[int, int, str, Any, Any]] = []
    for i, f in enumerate(recipe.filters):
        cls = registry.get("filter", f.name)
        parts.append(
            (
                STEPS.index(step_of(cls.stage)),
                i,
                f"filters[{i}] ({f.name})",
                cls,
                cls.validate_params(f.params, ""),
            )
        )
    for spec, params in recipe.scoring.items():  # the score step runs the scorers first
        cls, p = registry.component("scorer", spec, params, "")
        parts.append((STEPS.index("score"), -1, f"scoring.{spec}", cls, p))
    have = set(gen.columns)
    for _, _, label, cls, p in sorted(parts, key=lambda t: t[:2]):
        missing = sorted(cls.reads_of(p, gen.text_field) - have)
        if missing:
            raise UserError(
                f"{where}: field {label}: reads field {missing[0]!r}, which generator {gen.name} "
                f"and the steps before it do not write (they write: {', '.join(sorted(have))})"
            )
        have |= cls.writes_of(p)
