"""What a run is before it runs: the overrides a user gives (defined once, here; the CLI builds its
options from them and the flow takes them as one parameter) and the picklable :class:`RunSpec`
every process rebuilds a run's stages from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthflow.errors import UserError
from synthflow.recipe import Recipe


class Overrides(BaseModel):
    """Recipe fields a run may override. Each field's ``recipe`` metadata names the recipe key it
    sets; the CLI derives ``--n``, ``--model``, ... (``--set`` is repeatable) from this model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int | None = Field(None, description="accepted rows to produce", json_schema_extra={"recipe": "n"})
    model: str | None = Field(
        None,
        description="model: 'default' (embedded SmolLM2-135M-Instruct), a folder, or a served name",
        json_schema_extra={"recipe": "engine.model"},
    )
    out: str | None = Field(
        None, description="output root (default: the recipe's output.root, usually ./out)",
        json_schema_extra={"recipe": "output.root"},
    )  # fmt: skip
    engine: str | None = Field(
        None,
        description="engine: vllm (in process), openai (HTTP endpoint)",
        json_schema_extra={"recipe": "engine.name"},
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL for --engine openai",
        json_schema_extra={"recipe": "engine.base_url"},
    )
    seed: int | None = Field(
        None, description="run seed (sampling seed and seed order)", json_schema_extra={"recipe": "seed"}
    )
    batch_size: int | None = Field(
        None, description="records per engine call / task", json_schema_extra={"recipe": "batch_size"}
    )
    max_items: int | None = Field(
        None,
        description="generation budget: stop after this many items",
        json_schema_extra={"recipe": "max_items"},
    )
    # values are checked where the recipe is validated, so an error names the recipe field
    sets: list[str] | None = Field(
        None,
        description="override any recipe field (VALUE is YAML), e.g. --set generator.options.self_consistency=4 "
        "or --set scoring.judge.sample=1 (repeatable)",
    )

    @classmethod
    def recipe_keys(cls) -> dict[str, str]:
        """Override field -> the recipe key it sets."""
        return {
            name: f.json_schema_extra["recipe"]  # type: ignore[index]
            for name, f in cls.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and "recipe" in f.json_schema_extra
        }

    def as_recipe_keys(self) -> dict[str, Any]:
        import yaml

        extra: dict[str, Any] = {}
        for kv in self.sets or []:
            key, sep, val = kv.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--set {kv!r}: use KEY=VALUE, e.g. generator.options.self_consistency=4")
            try:
                value = yaml.safe_load(val)
            except yaml.YAMLError:
                raise UserError(f"--set {kv!r}: the value is not valid YAML") from None
            if value is None:  # it would be skipped silently: the recipe's value would stay
                raise UserError(f"--set {kv!r}: empty or null value; give a value, or drop the --set")
            extra[key.strip()] = value
        return {key: getattr(self, name) for name, key in self.recipe_keys().items()} | extra


@dataclass(frozen=True)
class RunSpec:
    """Everything a process needs to rebuild a run's stages: picklable, built once by the flow.
    The recipe is the validated model (not re-read from disk), ``item_start`` the first item index
    of the range this run reserved."""

    recipe: Recipe
    recipe_path: str
    run_id: str
    fingerprint: str
    item_start: int = 0
    resumed: bool = False
    dask: str | None = None  # --dask: the verify step's sandboxes run on this Dask cluster
