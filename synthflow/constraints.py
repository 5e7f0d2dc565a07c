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


@functools.cache
def conflicts() -> dict[str, frozenset[str]]:
    """id -> the ids it must not be drawn with (IFEval's table, symmetric, plus ours); built once."""
    _, table = _ifeval()
    out = {k: set(v) for k, v in table.items()}
    for a, b in spec().get("conflicts", []):
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return {k: frozenset(v) for k, v in out.items()}


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
# hidden elements, then any HTML tag with its attributes (alt text); '<<a title>>' is not a tag
_HIDDEN_HTML = re.compile(
    r"<([A-Za-z][A-Za-z0-9]*)\b[^<>]*\bhidden\b[^<>]*>.*?</\1\s*>|(?<!<)</?[A-Za-z][A-Za-z0-9]*\b[^<>]*>(?!>)",
    re.S,
)
_MD_COMMENT = re.compile(r"^\s*\[//\]:\s*#.*$", re.M)  # [//]: # (a markdown comment)
_MD_LINK_TARGET = re.compile(r"(\[[^\]]*\])\([^)]*\)")  # the URL of a link is not read
_FENCE = re.compile(r"(```|~~~).*?(\1|\Z)", re.S)
_ALPHA_WORD = re.compile(r"\b[A-Za-z]+(?:['’-][A-Za-z]+)*\b")
_FILLERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # blank letters: they separate words
COMMAS = {",", "\u201a", "\uff0c", "\u060c", "\u3001", "\ufe50", "\ufe51", "\u2e32", "\u2e34", "\u2e41"}


def normalized(text: str) -> str:
    """NFKC, with invisible format characters (zero-width spaces and joiners, soft hyphens) dropped
    and blank filler letters made spaces: ``real\u200bly`` reads as ``really``."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text)
    return "".join(" " if c in _FILLERS else c for c in text if unicodedata.category(c) != "Cf")


def visible(text: str, cid: str) -> str:
    """What a reader sees, normalized: no HTML comments, tags or hidden elements, no markdown comments
    or link targets, and no fenced code unless the constraint is JSON."""
    text = _MD_COMMENT.sub("", _COMMENT.sub("", normalized(text)))
    if cid != "detectable_format:json_format":
        text = _FENCE.sub("", text)
        text = _MD_LINK_TARGET.sub(r"\1", _HIDDEN_HTML.sub("", text))
    return text


def lookalike_letters(text: str) -> bool:
    """Letters that pass for others: small capitals, or a word mixing Latin with another script
    (a Cyrillic 'е' in 'vеry')."""
    import unicodedata

    for word in re.findall(r"\w+", text):
        scripts = set()
        for c in word:
            if not c.isalpha():
                continue
            name = unicodedata.name(c, "")
            if "SMALL CAPITAL" in name or name.startswith("MODIFIER LETTER"):
                return True
            scripts.add(name.split()[0] if name else "?")
        if "LATIN" in scripts and len(scripts) > 1:
            return True
    return False


def _real_words(text: str) -> list[str]:
    """Words with letters, of two letters or more (or 'a', 'I', 'O')."""
    return [w for w in _ALPHA_WORD.findall(text) if len(w) > 1 or w.lower() in ("a", "i", "o")]


def _has_text(part: str, min_words: int = 1) -> bool:
    return len(_real_words(part)) >= min_words


def _paragraphs(text: str, sep: str) -> list[str]:
    return [p for p in re.split(sep, text) if p.strip()]


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
    text, then our stricter reading where IFEval's can be padded or faked (each ``why`` is tested)."""
    if cid not in _ifeval()[0]:
        return Result(cid, False, "unknown_id")
    if not response.strip():
        return Result(cid, False, "empty")
    if not ifeval_check(cid, kwargs, response, prompt):
        return Result(cid, False, "ifeval")
    seen = visible(response, cid)
    if seen != response and not ifeval_check(cid, kwargs, seen, prompt):
        return Result(cid, False, "hidden")  # met only in a comment, code, a tag or an invisible character
    if lookalike_letters(seen):
        return Result(cid, False, "lookalike_letters")
    why = _stricter(cid, kwargs, seen, _COMMENT.sub("", normalized(response)))
    return Result(cid, not why, why)


def _stricter(cid: str, kw: dict[str, Any], seen: str, text: str) -> str:
    """Our reading of the phrasing in ``prompts/constraints/respond.jinja2``, where IFEval's check is
    looser; '' when the response follows it. ``seen``: the visible text; ``text``: the normalized
    text with its markdown links intact."""
    plain = seen.strip()
    if cid == "punctuation:no_comma" and any(c in COMMAS for c in seen):
        return "comma_lookalike"
    if cid == "change_case:english_lowercase" or cid == "change_case:english_capital":
        letters = [c for c in seen if c.isalpha()]
        if not letters or any(not c.isascii() for c in letters):
            return "not_english_letters"
        if cid == "change_case:english_capital" and not _english(seen.lower()):
            return "not_english"
    if cid == "language:response_language" and (len(_real_words(seen)) < 3 or not _english(seen)):
        return "too_little_text"
    if cid in ("keywords:existence", "keywords:frequency"):
        words = kw["keywords"] if cid == "keywords:existence" else [kw["keyword"]]
        counts = [len(re.findall(rf"\b{re.escape(w)}\b", seen, re.I)) for w in words]
        if cid == "keywords:existence" and not all(counts):
            return "keyword_inside_a_word"
        if (
            cid == "keywords:frequency"
            and kw.get("relation") == "at least"
            and counts[0] < int(kw["frequency"])
        ):
            return "keyword_inside_a_word"
    if cid == "keywords:forbidden_words":
        flat = re.sub(r"[*_~`]", "", seen)  # '**ver**y' is 'very'
        if any(re.search(rf"\b{re.escape(w)}\b", flat, re.I) for w in kw["forbidden_words"]):
            return "forbidden_word_split"
    if cid == "length_constraints:number_words":
        n = int(kw["num_words"])
        if kw.get("relation") == "at least":
            real = [w.lower() for w in _real_words(seen)]
            if len(real) < n or len(set(real)) < n / 4:
                return "non_words"  # numbers, symbols, single letters or one word repeated
        elif len(re.findall(r"[A-Za-z]+|\d+", seen)) >= n:
            return "joined_words"  # words joined by '_' or blank letters still count
    if cid == "length_constraints:number_paragraphs" and not all(
        _has_text(p, 2) for p in _paragraphs(seen, r"\s?\*\*\*\s?")
    ):
        return "empty_paragraph"
    if cid == "length_constraints:nth_paragraph_first_word":
        paras = _paragraphs(seen, r"\n\n")
        if not all(_has_text(p, 2) for p in paras):
            return "empty_paragraph"
        first = paras[int(kw["nth_paragraph"]) - 1].split()[0] if paras else ""
        if re.sub(r"[^A-Za-z]", "", first).lower() != str(kw["first_word"]).lower() or "'" in first:
            return "first_word"
    if cid == "detectable_content:number_placeholders":
        real = re.findall(
            r"\[[^\[\]\n]*[A-Za-z][^\[\]\n]*\](?!\()", _FENCE.sub("", text)
        )  # a link is not one
        if len(real) < int(kw["num_placeholders"]):
            return "empty_placeholder"
    if cid == "detectable_content:postscript":
        marker = re.escape(str(kw.get("postscript_marker") or ""))
        found = list(re.finditer(rf"^\s*{marker}(?![A-Za-z])(.*)$", seen, re.I | re.M | re.S))
        m = found[-1] if found else None
        if m is None:
            return "postscript_inline"  # IFEval finds the marker mid-sentence
        if not _has_text(m.group(1), 1) or not _has_text(seen[: m.start()], 3):
            return "postscript_empty_or_first"
    if cid == "detectable_format:number_bullet_lists":
        bullets = re.findall(r"^\s*[-*]\s+(.*)$", seen, re.M)
        if len([b for b in bullets if _has_text(b) and not re.fullmatch(r"[-*\s]*", b)]) != int(
            kw["num_bullets"]
        ):
            return "bullets"  # a rule ('---', '- - -'), an '*emphasis*' line or an empty bullet
        if re.search(r"^\s*(\d+[.)]|-|\*)\s*$", seen, re.M) or re.search(r"^\s*\d+[.)]\s+\S", seen, re.M):
            return "bullets"  # a bare marker line, or a numbered list beside the bullets
    if cid == "detectable_format:constrained_response":
        options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
        if sum(o in seen for o in options) != 1:
            return "not_one_option"
    if cid == "detectable_format:number_highlighted_sections":
        marks = re.findall(r"\*\*[^\n*]*[A-Za-z][^\n*]*\*\*|\*[^\n*]*[A-Za-z][^\n*]*\*", seen)
        if len(marks) < int(kw["num_highlights"]):
            return "empty_highlight"
    if cid == "detectable_format:multiple_sections":
        spl = re.escape(str(kw["section_spliter"]))
        heads = re.findall(rf"^\s*[#*]*\s*{spl}\s?\d+\b", seen, re.M)
        if len(heads) != int(kw["num_sections"]):
            return "sections"  # section marks start a line, exactly as many as asked
        parts = re.split(rf"^\s*[#*]*\s*{spl}\s?\d+\b", seen, flags=re.M)[1:]
        if not all(_has_text(p, 2) for p in parts):
            return "empty_section"
    if cid == "detectable_format:json_format":
        body = (
            plain.removeprefix("```json").removeprefix("```Json").removeprefix("```JSON").removeprefix("```")
        )
        body = body.removesuffix("```").strip()
        try:
            value = json.loads(body, parse_constant=_no_constant)
        except ValueError:
            return "json_strict"
        if not isinstance(value, (dict, list)) or not value or not _has_text(json.dumps(value), 1):
            return "json_empty"
    if cid == "detectable_format:title" and not re.search(r"<<[^\n<>]*[A-Za-z][^\n<>]*>>", seen):
        return "empty_title"
    if cid == "combination:two_responses":
        parts = [p for p in seen.split("******")]
        norm = [" ".join(p.casefold().split()) for p in parts]
        if len(parts) != 2 or norm[0] == norm[1] or not all(_has_text(p, 3) for p in parts):
            return "two_responses"
    if cid == "combination:repeat_prompt":
        req = str(kw.get("prompt_to_repeat") or "").strip()
        if not plain.startswith(req):
            return "not_word_for_word"  # IFEval ignores case
        rest = plain[len(req) :]
        if (rest[:1].isalnum()) or not _has_text(rest, 2):
            return "no_answer_after_request"
    if cid == "startend:end_checker":
        phrase = str(kw["end_phrase"]).strip()
        if not plain.endswith(phrase) or not _has_text(plain[: -len(phrase)], 2):
            return "end_phrase"  # exactly as written, after an answer
    if cid == "startend:quotation":
        inner = plain[1:-1]
        if '"' in inner or not _has_text(inner, 2):
            return "quotation"  # one quotation around an answer
    return ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _english(text: str) -> bool:
    import langdetect

    try:
        return langdetect.detect(text) == "en"
    except langdetect.LangDetectException:
        return False


def check_all(ids: list[str], kwargs: list[dict[str, Any]], response: str, prompt: str) -> list[Result]:
    return [check(c, kw, response, prompt) for c, kw in zip(ids, kwargs, strict=True)]
