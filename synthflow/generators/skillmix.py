"""Instruct-SkillMix (Kaur et al., 2024, "Instruct-SkillMix: A Powerful Pipeline for LLM Instruction
Tuning"): extract skills and query types with the LLM, then generate (instruction, response) pairs
that each combine k random skills and one query type.

Stage 1 (once per run, ``prepare``): the model names the skills and query types behind each seed
instruction (seeds from a user dataset), or lists them for each seed domain (``domain`` field).
Lists are merged (spellings of one skill become one, ``skill_key``) and cut to ``max_skills``: the
most frequent half and a seeded draw from the long tail for the rest, so the list is not only the
generic skills every answer names. Saved with the run as ``skills.json`` (also a Prefect artifact);
``skills_file`` reuses a reviewed list instead. Stage 2: per example, k skills and one query type
are drawn with a recorded seed; the shirker filter (``filters/quality.py``) rejects short or
evasive responses.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.engines.base import Sampling
from synthflow.errors import UserError
from synthflow.generators.base import Generator, Item, ParseError, add_usage, parse_or_reject
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register
from synthflow.seeds import Seed, jsonl_seeds

SKILLS_VERSION = 1
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+(?:\.\d+)*[.)]?)\s+")


def normalize_skill(s: str) -> str:
    """'2. Persuasive Writing: essays' -> 'persuasive writing'; 'C++ programming' and '3D modeling'
    keep their digits and symbols; '' for what is not a short phrase with a letter in it."""
    prev = None
    while prev != s:  # nested numbering like '1. 1.2.'
        prev, s = s, _BULLET.sub("", s)
    s = s.split(": ", 1)[0].strip().rstrip(":").strip(".;,\"'*").lower()
    s = re.sub(r"\s+", " ", s)
    ok = (
        1 <= len(s.split()) <= 6
        and re.fullmatch(r"[a-z0-9][a-z0-9 &/'+#.-]*[a-z0-9+#]", s or "") is not None
        and re.search(r"[a-z]", s) is not None
    )
    return s if ok else ""


def _split_list(block: str) -> list[str]:
    items = []
    for line in block.splitlines():
        for part in re.split(r"[,;]", line) if "," in line or ";" in line else [line]:
            n = normalize_skill(part)
            if n:
                items.append(n)
    return items


def parse_skill_lists(text: str) -> tuple[list[str], list[str]]:
    """'Skills: ... Query type(s): ...' (the prefilled 'Skills:' is not in ``text``)."""
    parts = re.split(r"\n?\s*(?:query\s*types?|type of query)\s*:\s*", text, maxsplit=1, flags=re.I)
    skills = _split_list(parts[0])
    queries = _split_list(parts[1]) if len(parts) > 1 else []
    return skills, queries


_FILLER = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "or",
        "to",
        "in",
        "for",
        "with",
        "on",
        "at",
        "by",
        "from",
        "skill",
        "skills",
        "ability",
        "abilities",
        "able",
        "use",
        "using",
        "how",
        "into",
    ]
)


def _stem(word: str) -> str:
    """A crude stem (enough to put "solving problems" with "problem solving")."""
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def skill_key(name: str) -> frozenset[str]:
    """Names with the same key are one skill: the stems of their words, filler words aside
    ("Problem-solving", "solving problems", "the ability to solve problems" are one)."""
    words = re.findall(r"[a-z0-9+#]+", name.lower())
    key = frozenset(_stem(w) for w in words if w not in _FILLER)
    return key or frozenset(words)


def merge_counts(lists: list[list[str]], limit: int, seed: str) -> list[dict[str, Any]]:
    """Names merged by :func:`skill_key` (each group named by its most frequent spelling), then up to
    ``limit`` of them: the most frequent half, and the rest drawn evenly (seeded) from the long tail,
    so rare skills are kept beside the generic ones everybody names. Ties are broken by a seeded
    shuffle, never alphabetically."""
    groups: dict[frozenset[str], Counter] = {}
    for lst in lists:
        seen: set[frozenset[str]] = set()
        for x in lst:
            k = skill_key(x)
            if k in seen:
                continue  # a list that names one skill twice counts it once
            seen.add(k)
            groups.setdefault(k, Counter())[x] += 1
    rng = random.Random(seed)
    named = []
    for forms in groups.values():
        best = max(sorted(forms), key=lambda f: (forms[f], -len(f)))
        named.append({"name": best, "count": sum(forms.values())})
    named.sort(key=lambda d: d["name"])
    rng.shuffle(named)
    named.sort(key=lambda d: -d["count"])  # stable: the shuffled order stands within a count
    head = named[: (limit + 1) // 2]
    tail = named[len(head) :]
    return head + rng.sample(tail, min(limit - len(head), len(tail)))


def weighted_sample(rng: random.Random, items: list[str], weights: list[float], k: int) -> list[str]:
    """``k`` distinct items, each draw in proportion to the weights of those left."""
    items, weights = list(items), [max(0.0, float(x)) for x in weights]
    out = []
    for _ in range(min(k, len(items))):
        i = (
            rng.choices(range(len(items)), weights=weights)[0]
            if sum(weights) > 0
            else rng.randrange(len(items))
        )
        out.append(items.pop(i))
        weights.pop(i)
    return out


class SkillMixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(2, ge=1, le=5, description="skills combined per example")
    extract_max: int = Field(40, ge=1, description="seeds analysed in stage 1")
    max_skills: int = Field(40, ge=2)
    max_query_types: int = Field(12, ge=1)
    list_size: int = Field(10, ge=2, description="items asked for per domain")
    skills_file: str | None = Field(None, description="reuse a saved skills.json instead of extracting")
    skill_weights: dict[str, float] | None = Field(
        None, description="draw skills in proportion to these weights (synthflow target: the weakest first)"
    )
    examples: str = Field("builtin:skillmix_examples.jsonl", description="worked pairs shown as few-shot")
    few_shot: int = Field(2, ge=0, le=8, description="example pairs per prompt")
    example_sets: int = Field(
        4, ge=1, description="fixed sets the prompts rotate through (prompts of one set share a prefix)"
    )


@register("generator", "skillmix")
class SkillMix(Generator):
    name = "skillmix"
    seed_fields = ("domain", "text", "instruction", "problem")
    prompts: ClassVar[dict[str, str]] = {
        "from_instruction": "skillmix/skills_from_instruction.jinja2",
        "for_domain": "skillmix/skills_for_domain.jinja2",
        "instruction": "skillmix/instruction.jinja2",
        "respond": "skillmix/respond.jinja2",
    }
    Options = SkillMixOptions
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "response": pa.string(),
        "skills": pa.list_(pa.string()),
        "query_type": pa.string(),
        "mix_seed": pa.string(),
    }
    schemas: ClassVar[dict[str, dict[str, Any]]] = {
        "instruction": {
            "type": "object",
            "properties": {"instruction": {"type": "string"}},
            "required": ["instruction"],
        }
    }
    text_field = "instruction"
    response_field = "response"
    step_sampling: ClassVar[dict[str, dict[str, Any]]] = {"respond": {"max_tokens": 512}}

    def __init__(self, recipe: Any, seeds: list[Seed], run_id: str = ""):
        super().__init__(recipe, seeds, run_id)
        self.skills: list[dict[str, Any]] = []
        self.query_types: list[dict[str, Any]] = []
        self.extracted_from: list[str] = []
        self.source = ""
        self.examples = [s.data for s in jsonl_seeds(self.opts.examples)]

    # ---- stage 1 -----------------------------------------------------------------------------
    def extraction_prompts(self) -> list[tuple[Seed, str, list[dict[str, str]]]]:
        out = []
        for s in self.seeds[: self.opts.extract_max]:
            if s.data.get("domain"):
                out.append(
                    (
                        s,
                        "for_domain",
                        self.templates["for_domain"].render(domain=s.data["domain"], n=self.opts.list_size),
                    )
                )
            else:
                out.append(
                    (s, "from_instruction", self.templates["from_instruction"].render(instruction=s.text))
                )
        return out

    def prepare(self, engine: Any, sampling: Sampling) -> None:
        o = self.opts
        if o.skills_file:
            p = Path(o.skills_file)
            if not p.is_file():
                raise UserError(f"{p}: skills file not found (generator.options.skills_file)")
            d = json.loads(p.read_text())
            self.skills, self.query_types = d["skills"], d["query_types"]
            self.source = f"file:{p}"
        else:
            prompts = self.extraction_prompts()
            reqs = [self.request(role, msgs, 0) for _, role, msgs in prompts]
            comps = engine.generate(reqs, self.sampling_for("for_domain", sampling))
            skill_lists, query_lists = [], []
            for (seed, _, _), comp in zip(prompts, comps, strict=True):
                sk, qt = parse_skill_lists(comp.text)
                skill_lists.append(sk)
                query_lists.append(qt)
                self.extracted_from.append(seed.seed_id)
            seed = f"{self.recipe.seed}:skillmix"
            self.skills = merge_counts(skill_lists, o.max_skills, seed + ":skills")
            self.query_types = merge_counts(query_lists, o.max_query_types, seed + ":query_types")
            self.source = "domains" if any(s.data.get("domain") for s, _, _ in prompts) else "instructions"
        if len(self.skills) < o.k or not self.query_types:
            raise UserError(
                f"skill extraction gave {len(self.skills)} skills and {len(self.query_types)} query types "
                f"(need at least {o.k} and 1); use a stronger model or set generator.options.skills_file"
            )

    def artifacts(self) -> dict[str, Any]:
        if not self.skills:
            return {}
        return {
            "skills.json": {
                "version": SKILLS_VERSION,
                "source": self.source,
                "prompt": self.templates[
                    "for_domain" if self.source == "domains" else "from_instruction"
                ].label,
                "extracted_from": self.extracted_from,
                "skills": self.skills,
                "query_types": self.query_types,
            }
        }

    # ---- stage 2 -----------------------------------------------------------------------------
    def mix(self, item: Item) -> tuple[list[str], str, str]:
        seed = f"{self.recipe.seed}:mix:{item.index}"
        rng = random.Random(seed)
        names = [s["name"] for s in self.skills]
        w = self.opts.skill_weights
        if w:
            skills = sorted(
                weighted_sample(rng, names, [w.get(n, min(w.values())) for n in names], self.opts.k)
            )
        else:
            skills = sorted(rng.sample(names, self.opts.k))
        return skills, rng.choice([q["name"] for q in self.query_types]), seed

    def examples_for(self, index: int) -> list[dict[str, Any]]:
        """One of ``example_sets`` fixed sets of example pairs, rotating with the item index."""
        rng = random.Random(f"{self.recipe.seed}:skillmix-examples:{index % self.opts.example_sets}")
        return rng.sample(self.examples, min(self.opts.few_shot, len(self.examples)))

    def render_examples(self) -> list[list[dict[str, str]]]:
        out = [msgs for _, _, msgs in self.extraction_prompts()[:2]]
        out.append(self.templates["for_domain"].render(domain="cooking", n=self.opts.list_size))
        sk, qt = ["summarization", "humor"], "how-to request"
        ex = self.examples_for(0)
        out.append(self.templates["instruction"].render(examples=ex, skills=sk, query_type=qt))
        out.append(self.templates["respond"].render(examples=ex, skills=sk, instruction="Explain tides."))
        return out

    def parse_instruction(self, text: str) -> str:
        if self.structured:
            try:
                text = str(json.loads(text).get("instruction", ""))
            except (ValueError, AttributeError):
                raise ParseError("invalid_json") from None
        line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
        line = re.sub(r"^(?:instruction|request)\s*:\s*", "", line, flags=re.I).strip().strip('"')
        if len(line.split()) < 3:
            raise ParseError("no_instruction")
        return line

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        """Two calls per batch: the instructions (k skills + a query type each), then the responses."""
        mixes = [self.mix(it) for it in items]
        t_ins, t_resp = self.templates["instruction"], self.templates["respond"]
        reqs = [
            self.request(
                "instruction",
                t_ins.render(examples=self.examples_for(it.index), skills=sk, query_type=qt),
                it.sample,
            )
            for it, (sk, qt, _) in zip(items, mixes, strict=True)
        ]
        out = StageResult()
        live = []
        comps = self.call(engine, "instruction", reqs, sampling)
        for it, (sk, qt, seed), comp in zip(items, mixes, comps, strict=True):
            rec = self.new_record(it, "instruction", comp, engine, sampling)
            rec.raw = comp.text
            rec.fields = {"skills": sk, "query_type": qt, "mix_seed": seed}
            ins = parse_or_reject(rec, self.parse_instruction, comp.text, out)
            if ins is not None:
                rec.fields["instruction"] = ins
                live.append(rec)
        reqs = [
            self.request(
                "respond",
                t_resp.render(
                    examples=self.examples_for(r.item),
                    skills=r.fields["skills"],
                    instruction=r.fields["instruction"],
                ),
                0,
            )
            for r in live
        ]
        for r, comp in zip(live, self.call(engine, "respond", reqs, sampling), strict=True):
            add_usage(r, comp)
            resp = comp.text.strip()
            if not resp:
                r.raw = comp.text
                out.rejects.append(Reject(r, "parse", "parse:empty_response"))
                continue
            r.fields["response"] = resp
            r.messages = [
                {"role": "user", "content": r.fields["instruction"]},
                {"role": "assistant", "content": resp},
            ]
            out.kept.append(r)
        return out

    def summary(self, accepted: list[Record]) -> dict[str, Any]:
        per_skill = Counter(s for r in accepted for s in r.fields.get("skills") or [])
        pairs = Counter(
            " + ".join(p)
            for r in accepted
            for p in itertools.combinations(sorted(r.fields.get("skills") or []), 2)
        )
        names = [s["name"] for s in self.skills]
        unused = [n for n in names if per_skill.get(n, 0) == 0]
        top = sorted(names, key=lambda n: (-per_skill.get(n, 0), n))
        return {
            "skills": f"{len(names)} extracted ({self.source}), {len(names) - len(unused)} used; query types: {len(self.query_types)}",
            "skill coverage (top 10)": ", ".join(f"{n}={per_skill.get(n, 0)}" for n in top[:10]),
            "skill pairs": f"{len(pairs)} distinct used; most: "
            + ", ".join(f"{p}={c}" for p, c in pairs.most_common(3)),
            "skills never used": f"{len(unused)}" + (f" (e.g. {', '.join(unused[:5])})" if unused else ""),
            "coverage": {"skills": {n: per_skill.get(n, 0) for n in names}, "pairs": dict(pairs)},
        }

    def card_section(self) -> str:
        return (
            "## Instruct-SkillMix provenance\n\n"
            "- `skills`: the k skills the example had to combine; `query_type`: the query type\n"
            "- `mix_seed`: the seed of the draw (reproducible); the extracted lists are in `skills.json`\n"
        )
