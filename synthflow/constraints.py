"""Verifiable instruction-following constraints (IFEval's catalogue), checked by code.

The checkers are IFEval's own reference implementation (Google Research, Apache-2.0), as packaged by
``if-verifiable``: each constraint is an instruction id (``punctuation:no_comma``) with keyword
arguments (``length_constraints:number_words`` with ``{relation, num_words}``), the vocabulary
IFEval, lm-eval and other IF verifiers read. What is ours:

- the catalogue of ids drawn for data (``CATALOGUE``) and how each one's keyword arguments are drawn
  (``synthflow/data/constraints.yaml``, data, not code);
- the combination rules: IFEval's own conflict table, made symmetric, plus the extra pairs in the
  same data file (VIF-RAG's rule that a drawn set holds only compatible constraints);
- a check that is stricter than IFEval's strict mode where a response could game it: every checker
  must also pass on the *visible* text (HTML comments removed, and fenced code removed except for
  JSON), a bullet is a ``-`` or ``*`` followed by a space, "at least N words" counts words with
  letters only, and a postscript starts a line.

``length_constraints:number_sentences`` and ``change_case:capital_word_frequency`` are left out:
IFEval's checkers for them need NLTK's punkt model, a download this tool cannot assume (it runs
offline).
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pyarrow as pa
import yaml

# every keyword argument IFEval's instructions take: the ``kwargs`` column is a list of this struct
# (absent arguments are null), the layout of the google/IFEval dataset
KWARG_TYPES: dict[str, pa.DataType] = {
    "capital_frequency": pa.int64(),
    "capital_relation": pa.string(),
    "end_phrase": pa.string(),
    "first_word": pa.string(),
    "forbidden_words": pa.list_(pa.string()),
    "frequency": pa.int64(),
    "keyword": pa.string(),
    "keywords": pa.list_(pa.string()),
    "language": pa.string(),
    "let_frequency": pa.int64(),
    "let_relation": pa.string(),
    "letter": pa.string(),
    "nth_paragraph": pa.int64(),
    "num_bullets": pa.int64(),
    "num_highlights": pa.int64(),
    "num_paragraphs": pa.int64(),
    "num_placeholders": pa.int64(),
    "num_sections": pa.int64(),
    "num_sentences": pa.int64(),
    "num_words": pa.int64(),
    "postscript_marker": pa.string(),
    "prompt_to_repeat": pa.string(),
    "relation": pa.string(),
    "section_spliter": pa.string(),
}
KWARGS_TYPE = pa.list_(pa.struct([pa.field(k, t) for k, t in KWARG_TYPES.items()]))


@functools.cache
def _ifeval() -> tuple[dict[str, Any], dict[str, set[str]]]:
    import langdetect
    from if_verifiable.ifeval.instructions_registry import (
        INSTRUCTION_CONFLICTS,
        INSTRUCTION_DICT,
        conflict_make,
    )

    langdetect.DetectorFactory.seed = 0  # IFEval's language check, deterministic
    return dict(INSTRUCTION_DICT), conflict_make({k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()})


@functools.cache
def spec() -> dict[str, Any]:
    """``synthflow/data/constraints.yaml``: the catalogue's argument draws and extra conflicts."""
    text = resources.files("synthflow").joinpath("data/constraints.yaml").read_text()
    return yaml.safe_load(text)


def catalogue() -> list[str]:
    """The instruction ids drawn for data (every IFEval id a checker decides, but sentence counts)."""
    return list(spec()["constraints"])


def conflicts() -> dict[str, set[str]]:
    """id -> the ids it must not be drawn with (IFEval's table, symmetric, plus ours)."""
    _, table = _ifeval()
    out = {k: set(v) for k, v in table.items()}
    for a, b in spec().get("conflicts", []):
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def compatible(ids: list[str]) -> bool:
    table = conflicts()
    return all(b not in table.get(a, set()) for i, a in enumerate(ids) for b in ids[i + 1 :])


_WORD = re.compile(r"[A-Za-z]{3,}")


def draw_kwargs(cid: str, rng: random.Random, instruction: str) -> dict[str, Any]:
    """One constraint's keyword arguments, drawn as the data file says. ``from_instruction`` picks
    words of the instruction (a keyword the response can use naturally)."""
    out: dict[str, Any] = {}
    for name, how in (spec()["constraints"][cid] or {}).items():
        if isinstance(how, dict) and "from_instruction" in how:
            words = sorted({w.lower() for w in _WORD.findall(instruction)} - set(spec()["stopwords"]))
            pool = words or list(how.get("fallback", ["answer"]))
            k = min(int(how["from_instruction"]), len(pool))
            picked = rng.sample(pool, k)
            out[name] = picked if how.get("list", True) else picked[0]
        elif isinstance(how, dict) and "range" in how:
            lo, hi = how["range"]
            out[name] = rng.randint(int(lo), int(hi))
        elif isinstance(how, list):
            out[name] = rng.choice(how)
        else:
            out[name] = how
    if cid == "combination:repeat_prompt":
        out["prompt_to_repeat"] = instruction
    return out


def draw(rng: random.Random, first: str, k: int, pool: list[str], instruction: str) -> list[dict[str, Any]]:
    """``first`` and up to ``k - 1`` more ids from ``pool``, each compatible with all drawn before."""
    ids = [first]
    table = conflicts()
    rest = [c for c in pool if c != first]
    rng.shuffle(rest)
    for c in rest:
        if len(ids) >= k:
            break
        if all(c not in table.get(d, set()) and d not in table.get(c, set()) for d in ids):
            ids.append(c)
    return [{"id": c, "kwargs": draw_kwargs(c, rng, instruction)} for c in ids]


def full_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """One constraint's arguments as a row of the ``kwargs`` struct (every argument, null if unused)."""
    unknown = set(kw) - set(KWARG_TYPES)
    if unknown:
        raise ValueError(f"unknown IFEval argument(s) {sorted(unknown)}")
    return {k: kw.get(k) for k in KWARG_TYPES}


_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)
_FENCE = re.compile(r"```.*?(```|\Z)", re.S)
_BULLET = re.compile(r"^\s*[-*]\s+\S", re.M)
_ALPHA_WORD = re.compile(r"\b[A-Za-z]+(?:['’-][A-Za-z]+)*\b")


def visible(text: str, cid: str) -> str:
    """What a reader sees: no HTML comments; no fenced code unless the constraint is JSON."""
    text = _COMMENT.sub("", text)
    if cid != "detectable_format:json_format":
        text = _FENCE.sub("", text)
    return text


def ifeval_check(cid: str, kwargs: dict[str, Any], response: str, prompt: str) -> bool:
    """IFEval's reference check, strict mode (the response as given)."""
    registry, _ = _ifeval()
    checker = registry[cid](cid)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return bool(response.strip()) and bool(checker.check_following(response))


@dataclass
class Result:
    id: str
    ok: bool
    why: str = ""


def check(cid: str, kwargs: dict[str, Any], response: str, prompt: str) -> Result:
    """One constraint on one response: IFEval's strict check on the text as given and on its visible
    text, plus our stricter counts where IFEval's can be padded or faked."""
    if cid not in _ifeval()[0]:
        return Result(cid, False, "unknown_id")
    if not response.strip():
        return Result(cid, False, "empty")
    if not ifeval_check(cid, kwargs, response, prompt):
        return Result(cid, False, "ifeval")
    seen = visible(response, cid)
    if seen != response and not ifeval_check(cid, kwargs, seen, prompt):
        return Result(cid, False, "hidden")  # met only inside a comment or a code block
    bullets = cid == "detectable_format:number_bullet_lists"
    if bullets and len(_BULLET.findall(seen)) != int(kwargs["num_bullets"]):
        return Result(cid, False, "bullets")  # a '---' rule or '*emphasis*' line is not a bullet
    if cid == "detectable_content:postscript":
        marker = re.escape(str(kwargs.get("postscript_marker") or ""))
        if not re.search(rf"^\s*{marker}", seen, re.I | re.M):
            return Result(cid, False, "postscript_inline")  # IFEval finds the marker mid-sentence
    at_least = cid == "length_constraints:number_words" and kwargs.get("relation") == "at least"
    if at_least and len(_ALPHA_WORD.findall(seen)) < int(kwargs["num_words"]):
        return Result(cid, False, "non_words")  # numbers and symbols do not make the count
    return Result(cid, True)


def check_all(ids: list[str], kwargs: list[dict[str, Any]], response: str, prompt: str) -> list[Result]:
    return [check(c, kw, response, prompt) for c, kw in zip(ids, kwargs, strict=True)]


def as_json(kwargs: list[dict[str, Any]]) -> str:
    return json.dumps([{k: v for k, v in kw.items() if v is not None} for kw in kwargs], sort_keys=True)
