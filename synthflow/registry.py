"""The one registry of named components (generators, engines, filters, verifiers, scorers, seed
sources), lazy and typed: the built-in names and the modules that define them are listed here, and
a module is imported only when one of its components is asked for. Recipes refer to components by
name; an unknown name gets a "did you mean ...?" hint (the one such check of the project).

A module registers its components with ``@register(kind, name)`` when it is imported (a plugin
does the same); ``tests/test_contracts.py`` checks that this table matches the decorators.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from synthflow.errors import UserError

KINDS = ("generator", "engine", "filter", "verifier", "scorer", "seed_source")

BUILTINS: dict[str, dict[str, str]] = {
    "generator": {
        "agentinstruct": "synthflow.generators.agentinstruct",
        "bonito": "synthflow.generators.bonito",
        "code_codet": "synthflow.generators.code_codet",
        "constraints": "synthflow.generators.constraints",
        "ensemble": "synthflow.generators.ensemble",
        "math_pal": "synthflow.generators.math_pal",
        "math_templates": "synthflow.generators.math_templates",
        "self_instruct": "synthflow.generators.self_instruct",
        "skillmix": "synthflow.generators.skillmix",
    },
    "engine": {"vllm": "synthflow.engines", "openai": "synthflow.engines", "fake": "synthflow.engines"},
    "filter": {
        "verify": "filters.verify",
        "exact_dedup": "filters.dedup",
        "near_dedup": "filters.dedup",
        "decontaminate": "filters.decontam",
        "shirker": "filters.quality",
        "thresholds": "filters.quality",
        "select": "filters.select",
        "sft": "filters.sft",
        "answer_check": "filters.answer_check",
        "constraints": "filters.constraints",
    },
    "verifier": {
        "math_pot": "filters.verify_math",
        "template": "filters.verify_math",
        "python_tests": "filters.verify_code",
        "codet": "filters.verify_code",
    },
    "scorer": {
        "heuristics": "filters.quality",
        "ifd": "filters.ifd",
        "judge": "filters.judge",
        "sklearn": "filters.clf",
    },
    "seed_source": {
        "jsonl": "synthflow.seeds",
        "table": "synthflow.seeds",
        "docs": "synthflow.seeds",
        "self_instruct": "synthflow.seeds",
        "gsm8k": "synthflow.seeds",
    },
}

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: ``@register("generator", "math_pal")``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}")

    def deco(obj: Any) -> Any:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{kind} {name!r} registered twice")
        _REGISTRY[kind][name] = obj
        return obj

    return deco


def names(kind: str) -> list[str]:
    return sorted(set(BUILTINS[kind]) | set(_REGISTRY[kind]))


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "choose one of: " + ", ".join(choices)


def unknown(what: str, name: str, choices: list[str], where: str = "") -> UserError:
    """The one-line error for an unknown name, with its did-you-mean hint."""
    prefix = f"{where}: " if where else ""
    return UserError(f"{prefix}unknown {what} {name!r}; {did_you_mean(name, sorted(choices))}")


def get(kind: str, name: str, where: str = "") -> Any:
    """Look up a component, importing its module on first use; an unknown name is one UserError
    line with a suggestion."""
    table = _REGISTRY[kind]
    if name not in table and name in BUILTINS[kind]:
        importlib.import_module(BUILTINS[kind][name])
    if name in table:
        return table[name]
    raise unknown(kind, name, names(kind), where)


def component(kind: str, spec: str, params: dict[str, Any] | None, where: str) -> tuple[Any, Any]:
    """A component named ``name`` or ``name:ARG`` (``sklearn:models/q`` passes ``models/q`` to the
    component's ``arg_param``) and its validated params."""
    name, sep, arg = spec.partition(":")
    cls = get(kind, name, where)
    raw = dict(params or {})
    if sep:
        if not getattr(cls, "arg_param", None):
            raise UserError(f"{where}: {kind} {name!r} takes no ':' argument")
        raw[cls.arg_param] = arg
    return cls, cls.validate_params(raw, where)


def validate_model(model_cls: Any, data: dict[str, Any], where: str) -> Any:
    """Validate ``data`` against a pydantic model; a failure is one UserError line naming the field."""
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(data or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        field = f".{loc}" if loc else ""
        if err.get("type") == "extra_forbidden":
            hint = did_you_mean(str(err["loc"][-1]), list(model_cls.model_fields))
            raise UserError(f"{where}{field}: unknown field; {hint}") from None
        raise UserError(f"{where}{field}: {err.get('msg', 'invalid')}") from None
