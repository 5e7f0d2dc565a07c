"""Prompt templates: ``prompts/<generator>/<name>.jinja2``, rendered with StrictUndefined.

Each template starts with a version comment, ``{# version: 3 #}``; the version and a short hash of
the template source go into every row's provenance. A template renders to a chat conversation:
lines ``<|system|>``, ``<|user|>`` and ``<|assistant|>`` start the turns (few-shot examples are
earlier user/assistant turns).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from synthflow.errors import UserError

_VERSION_RE = re.compile(r"^\{#-?\s*version:\s*(\S+?)\s*-?#\}")
_TURN_RE = re.compile(r"^<\|(system|user|assistant)\|>[ \t]*$", re.MULTILINE)


def prompts_root() -> Path:
    env = os.environ.get("SYNTHFLOW_PROMPTS")
    # ``prompts/``, package data: ``synthflow/_prompts`` links to it in a checkout, a copy in a wheel
    return Path(env) if env else Path(__file__).resolve().parent / "_prompts"


@lru_cache(maxsize=1)
def _env(root: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@dataclass(frozen=True)
class Prompt:
    name: str  # e.g. "math/pal.jinja2"
    version: str
    sha: str
    template: jinja2.Template

    def render(self, **ctx: Any) -> list[dict[str, str]]:
        """Render to chat messages. A missing variable raises UserError naming the template."""
        try:
            text = self.template.render(**ctx)
        except jinja2.UndefinedError as e:
            raise UserError(f"prompts/{self.name}: {e.message}") from None
        return split_turns(text, self.name)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def split_turns(text: str, name: str = "<string>") -> list[dict[str, str]]:
    marks = list(_TURN_RE.finditer(text))
    if not marks:
        return [{"role": "user", "content": text.strip()}]
    if text[: marks[0].start()].strip():
        raise UserError(f"prompts/{name}: text before the first <|role|> line")
    msgs = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        msgs.append({"role": m.group(1), "content": text[m.end() : end].strip()})
    return msgs


def load_prompt(name: str) -> Prompt:
    """Load ``prompts/<name>``; ``name`` may omit the ``.jinja2`` suffix."""
    if not name.endswith(".jinja2"):
        name += ".jinja2"
    root = prompts_root()
    path = root / name
    if not path.is_file():
        available = sorted(str(p.relative_to(root)) for p in root.rglob("*.jinja2"))
        from synthflow.registry import did_you_mean

        raise UserError(f"prompt template {name!r} not found under {root}; {did_you_mean(name, available)}")
    src = path.read_text()
    m = _VERSION_RE.match(src)
    if not m:
        raise UserError(f"{path}: the first line must be a version comment like {{# version: 1 #}}")
    try:
        tmpl = _env(str(root)).get_template(name)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: {e.message}") from None
    return Prompt(
        name=name, version=m.group(1), sha=hashlib.sha256(src.encode()).hexdigest()[:8], template=tmpl
    )


def all_prompt_names() -> list[str]:
    root = prompts_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jinja2"))
