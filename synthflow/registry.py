"""The one registry of named components (generators, engines, filters, verifiers, scorers).

Recipes refer to components by name; an unknown name gets a "did you mean ...?" hint.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from synthflow.errors import UserError

KINDS = ("generator", "engine", "filter", "verifier", "scorer", "seed_source")

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}

# Modules whose import registers the built-in components.
_BUILTIN_MODULES = (
    "synthflow.engines",
    "synthflow.generators",
    "synthflow.seeds",
    "filters",
)
_loaded = False


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


def load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    _loaded = True


def names(kind: str) -> list[str]:
    load_builtins()
    return sorted(_REGISTRY[kind])


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return "choose one of: " + ", ".join(choices)


def get(kind: str, name: str, where: str = "") -> Any:
    """Look up a component; raise a one-line UserError with a suggestion if it is unknown."""
    load_builtins()
    table = _REGISTRY[kind]
    if name in table:
        return table[name]
    prefix = f"{where}: " if where else ""
    raise UserError(f"{prefix}unknown {kind} {name!r}; {did_you_mean(name, sorted(table))}")


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
            close = difflib.get_close_matches(
                str(err["loc"][-1]), list(model_cls.model_fields), n=1, cutoff=0.5
            )
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(model_cls.model_fields)}"
            )
            raise UserError(f"{where}{field}: unknown field{hint}") from None
        raise UserError(f"{where}{field}: {err.get('msg', 'invalid')}") from None
