"""AgentInstruct (Mitra et al., 2024, "AgentInstruct: Toward Generative Teaching with Agentic
Flows"): raw documents and code become instruction data through three flows.

1. Content transformation: each seed chunk is rewritten into a form suited to a skill of the
   recipe's taxonomy (an argument passage, a debate, a meeting transcript, a code walkthrough, ...).
2. Seed instruction generation: an instruction of one of the skill's instruction types over the
   transformed text.
3. Instruction refinement: a suggester proposes ways to make it harder or more specific and an
   editor applies them, revising the text too where the harder task needs it, for 1-2 rounds. A
   refined task is then checked (greedy yes/no) to be still answerable from its text alone; one that
   is not is rejected as ``refine:unanswerable``.
Then the response is generated. Each row records the whole chain. A transformation, instruction,
edit or response cut at max_tokens rejects the row (``parse:truncated:<step>``).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.answers import AnswerTask
from synthflow.engines.base import Sampling
from synthflow.generators.base import Generator, Item, add_usage
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register


class Skill(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transformations: list[str] = Field(min_length=1)
    instruction_types: list[str] = Field(min_length=1)
    for_code: bool = False


DEFAULT_TAXONOMY: dict[str, dict[str, Any]] = {
    "reading_comprehension": {
        "transformations": [
            "an argument passage",
            "a debate between two people",
            "a meeting transcript",
            "a short news report",
        ],
        "instruction_types": [
            "literal comprehension question",
            "inference question that needs reasoning",
            "question about the author's main claim",
        ],
    },
    "text_modification": {
        "transformations": ["an instruction manual", "a formal email", "a poem", "a satire"],
        "instruction_types": [
            "request to paraphrase a passage",
            "request to simplify it for a ten-year-old",
            "request to change its tone",
        ],
    },
    "open_domain_qa": {
        "transformations": [
            "an encyclopedia entry",
            "an interview with an expert",
            "a conversation between a student and a teacher",
        ],
        "instruction_types": ["factual question", "why question", "comparison question"],
    },
    "coding": {
        "transformations": ["a code walkthrough", "a technical blog post about the code"],
        "instruction_types": [
            "request to explain what the code does",
            "request to find a bug or edge case",
            "request to write a unit test",
        ],
        "for_code": True,
    },
}


def first_paragraph(text: str) -> str:
    para = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    return " ".join(para.split())


def parse_edit(text: str) -> tuple[str | None, str]:
    """The editor's answer after the prefilled ``Text:``: (revised text or None when unchanged, task).
    An answer without a ``Task:`` line is read as the task alone."""
    m = re.search(r"^\s*Task\s*:\s*", text, re.M | re.I)
    if not m:
        return None, first_paragraph(text)
    passage = text[: m.start()].strip()
    task = first_paragraph(text[m.end() :])
    if not passage or passage.strip(" .").lower() in ("unchanged", "no change", "same"):
        return None, task
    return " ".join(passage.split()), task


def parse_suggestions(text: str, limit: int) -> list[str]:
    lines = ("1." + text).splitlines()
    out = []
    for line in lines:
        m = re.match(r"^\s*(?:\d+[.)]|[-*])\s*(.+)$", line)
        if m and m.group(1).strip():
            out.append(" ".join(m.group(1).split()))
        if len(out) >= limit:
            break
    return out


class AgentInstructOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    taxonomy: dict[str, Skill] = Field(
        default_factory=lambda: {k: Skill(**v) for k, v in DEFAULT_TAXONOMY.items()}
    )
    refinement_rounds: int = Field(1, ge=0, le=2)
    suggestions: int = Field(2, ge=1, le=5)
    min_transformed_words: int = Field(30, ge=1)
    min_instruction_words: int = Field(4, ge=1)


@register("generator", "agentinstruct")
class AgentInstruct(Generator):
    name = "agentinstruct"
    prompts: ClassVar[dict[str, str]] = {
        "transform": "agentinstruct/transform.jinja2",
        "instruction": "agentinstruct/instruction.jinja2",
        "suggest": "agentinstruct/suggest.jinja2",
        "edit": "agentinstruct/edit.jinja2",
        "respond": "agentinstruct/respond.jinja2",
        "answerable": "agentinstruct/answerable.jinja2",
    }
    Options = AgentInstructOptions
    step_sampling: ClassVar[dict[str, dict[str, Any]]] = {
        "transform": {"max_tokens": 400},
        "respond": {"max_tokens": 512},
        "answerable": {"temperature": 0.0, "max_tokens": 4},
    }
    # a suggestion list cut at max_tokens loses its last suggestion; the yes/no needs one word
    truncation_ok = frozenset({"suggest", "answerable"})
    columns: ClassVar[dict[str, pa.DataType]] = {
        "instruction": pa.string(),
        "response": pa.string(),
        "ai_skill": pa.string(),
        "ai_transformation": pa.string(),
        "ai_instruction_type": pa.string(),
        "ai_seed_source": pa.string(),
        "ai_seed_text": pa.string(),
        "ai_transformed_text": pa.string(),
        "ai_seed_instruction": pa.string(),
        "ai_suggestions": pa.list_(pa.list_(pa.string())),
        "ai_instruction_versions": pa.list_(pa.string()),
        "ai_text_revised": pa.bool_(),
        "ai_answerable": pa.bool_(),
    }
    text_field = "instruction"
    response_field = "response"

    def answer_task(self, fields: dict[str, Any]) -> AnswerTask | None:
        """The task is answered again from the transformed text; a number by value, a short answer
        as a phrase of the text, a longer one by ROUGE-L, all grounded in the text."""
        resp = (fields.get("response") or "").strip()
        if not resp or not fields.get("instruction"):
            return None
        bare = resp.rstrip(".").replace(",", "")
        if re.fullmatch(r"-?\d+(?:\.\d+)?", bare):
            kind = "number"
        elif len(resp.split()) <= 4:
            kind = "span"
        else:
            kind = "text"
        return AnswerTask(fields["instruction"], resp, kind, fields.get("ai_transformed_text"), grounded=True)

    def choose(self, item: Item) -> tuple[str, str, str]:
        """(skill, transformation, instruction type), drawn with a seed from the item index; code
        seeds go to skills marked for_code, text seeds to the others."""
        rng = random.Random(f"{self.recipe.seed}:ai:{item.index}")
        is_code = item.seed.data.get("doc_kind") == "code"
        tax = self.opts.taxonomy
        skills = [k for k, v in tax.items() if v.for_code == is_code] or list(tax)
        skill = rng.choice(sorted(skills))
        return skill, rng.choice(tax[skill].transformations), rng.choice(tax[skill].instruction_types)

    def render_examples(self) -> list[list[dict[str, str]]]:
        it = self.plan(0, 1)[0]
        skill, tr, itype = self.choose(it)
        t = "A transformed text about the topic, several sentences long."
        return [
            self.templates["transform"].render(text=it.seed.text, skill=skill, transformation=tr),
            self.templates["instruction"].render(text=t, instruction_type=itype),
            self.templates["suggest"].render(
                text=t, instruction="Summarize the text.", n=self.opts.suggestions
            ),
            self.templates["edit"].render(
                text=t, instruction="Summarize the text.", suggestions=["Limit it to 20 words."]
            ),
            self.templates["respond"].render(text=t, instruction="Summarize the text."),
            self.templates["answerable"].render(text=t, instruction="Summarize the text."),
        ]

    def generate(self, items: list[Item], engine: Any, sampling: Sampling) -> StageResult:
        o = self.opts
        out = StageResult()
        # flow 1: content transformation
        reqs, provenance = [], []
        for it in items:
            skill, tr, itype = self.choose(it)
            reqs.append(
                self.request(
                    "transform",
                    self.templates["transform"].render(text=it.seed.text, skill=skill, transformation=tr),
                    it.sample,
                )
            )
            provenance.append({
                "ai_skill": skill,
                "ai_transformation": tr,
                "ai_instruction_type": itype,
                "ai_seed_source": f"{it.seed.data.get('source', '')}#{it.seed.data.get('chunk', 0)}",
                "ai_seed_text": it.seed.text,
                "ai_suggestions": [],
                "ai_instruction_versions": [],
                "ai_text_revised": False,
            })  # fmt: skip
        recs: list[Record] = []
        for it, prov, comp in zip(
            items, provenance, self.call(engine, "transform", reqs, sampling), strict=True
        ):
            rec = self.new_record(it, "transform", comp, engine, sampling)
            rec.fields = {**prov, "ai_transformed_text": comp.text.strip()}
            rec.raw = comp.text
            recs.append(rec)
        live = []
        for r in recs:
            if r.gen["steps"][0]["finish_reason"] == "length":  # a cut text: no task is built on it
                out.rejects.append(Reject(r, "parse", "parse:truncated:transform"))
            elif len(r.fields["ai_transformed_text"].split()) < o.min_transformed_words:
                out.rejects.append(Reject(r, "parse", "parse:transformation_too_short"))
            else:
                live.append(r)
        if not live:
            return out
        # flow 2: seed instruction generation
        live = self._instructions(live, engine, sampling, out)
        if not live:
            return out
        # flow 3: refinement rounds (suggester, then editor), then the answerability check
        for rnd in range(o.refinement_rounds):
            self._refine(live, rnd, engine, sampling)
        if o.refinement_rounds:
            live = self._answerable(live, engine, sampling, out)
            if not live:
                return out
        # response
        reqs = [
            self.request(
                "respond",
                self.templates["respond"].render(
                    text=r.fields["ai_transformed_text"], instruction=r.fields["instruction"]
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
            user = f"{r.fields['ai_transformed_text']}\n\n{r.fields['instruction']}"
            r.messages = [{"role": "user", "content": user}, {"role": "assistant", "content": resp}]
            out.kept.append(r)
        return out

    def _instructions(
        self, live: list[Record], engine: Any, sampling: Sampling, out: StageResult
    ) -> list[Record]:
        tmpl = self.templates["instruction"]
        reqs = [
            self.request(
                "instruction",
                tmpl.render(
                    text=r.fields["ai_transformed_text"], instruction_type=r.fields["ai_instruction_type"]
                ),
                0,
            )
            for r in live
        ]
        kept = []
        for r, comp in zip(live, self.call(engine, "instruction", reqs, sampling), strict=True):
            add_usage(r, comp)
            ins = first_paragraph(comp.text)
            if len(ins.split()) < self.opts.min_instruction_words:
                r.raw = comp.text
                out.rejects.append(Reject(r, "parse", "parse:no_instruction"))
                continue
            r.fields.update(instruction=ins, ai_seed_instruction=ins, ai_instruction_versions=[ins])
            kept.append(r)
        return kept

    def _refine(self, live: list[Record], rnd: int, engine: Any, sampling: Sampling) -> None:
        o = self.opts
        sug_t, edit_t = self.templates["suggest"], self.templates["edit"]
        reqs = [
            self.request(
                "suggest",
                sug_t.render(
                    text=r.fields["ai_transformed_text"], instruction=r.fields["instruction"], n=o.suggestions
                ),
                rnd,
            )
            for r in live
        ]
        suggestions = []
        for r, comp in zip(live, self.call(engine, "suggest", reqs, sampling), strict=True):
            add_usage(r, comp)
            got = parse_suggestions(comp.text, o.suggestions + 1)
            if comp.finish_reason == "length":
                got = got[:-1]  # the last suggestion may be cut
            suggestions.append(got[: o.suggestions])
        # the editor applies them (an instruction with no usable suggestion keeps its wording)
        todo = [(r, s) for r, s in zip(live, suggestions, strict=True) if s]
        reqs = [
            self.request(
                "edit",
                edit_t.render(
                    text=r.fields["ai_transformed_text"], instruction=r.fields["instruction"], suggestions=s
                ),
                rnd,
            )
            for r, s in todo
        ]
        edited = dict(zip([id(r) for r, _ in todo], self.call(engine, "edit", reqs, sampling), strict=True))
        for r, s in zip(live, suggestions, strict=True):
            r.fields["ai_suggestions"] = [*r.fields["ai_suggestions"], s]
            comp = edited.get(id(r))
            if comp is None:
                continue
            add_usage(r, comp)
            passage, new = parse_edit(comp.text)
            if len(new.split()) >= o.min_instruction_words:
                r.fields["instruction"] = new
                r.fields["ai_instruction_versions"] = [*r.fields["ai_instruction_versions"], new]
                if passage is not None and len(passage.split()) >= o.min_transformed_words:
                    r.fields["ai_transformed_text"] = passage
                    r.fields["ai_text_revised"] = True

    def _answerable(
        self, live: list[Record], engine: Any, sampling: Sampling, out: StageResult
    ) -> list[Record]:
        """Greedy yes/no: can the refined task be done from its (revised) text alone?"""
        tmpl = self.templates["answerable"]
        reqs = [
            self.request(
                "answerable",
                tmpl.render(text=r.fields["ai_transformed_text"], instruction=r.fields["instruction"]),
                0,
            )
            for r in live
        ]
        kept = []
        for r, comp in zip(live, self.call(engine, "answerable", reqs, sampling), strict=True):
            add_usage(r, comp)
            ans = comp.text.strip().lower()
            r.fields["ai_answerable"] = ans.startswith("yes")
            if ans.startswith("yes"):
                kept.append(r)
            else:
                r.raw = comp.text
                out.rejects.append(Reject(r, "generate", "refine:unanswerable"))
        return kept

    def summary(self, accepted: list[Record]) -> dict[str, Any]:
        return {
            "skills": dict(Counter(r.fields["ai_skill"] for r in accepted)),
            "transformations": dict(Counter(r.fields["ai_transformation"] for r in accepted)),
            "refined": sum(1 for r in accepted if len(r.fields.get("ai_instruction_versions") or []) > 1),
            "texts revised by the editor": sum(1 for r in accepted if r.fields.get("ai_text_revised")),
        }

    def card_section(self) -> str:
        return (
            "## AgentInstruct provenance\n\n"
            "- `seed_id`, `ai_seed_source`, `ai_seed_text`: the seed chunk\n"
            "- `ai_skill`, `ai_transformation`, `ai_transformed_text`: the content transformation flow\n"
            "- `ai_instruction_type`, `ai_seed_instruction`: the seed instruction flow\n"
            "- `ai_suggestions` (one list per refinement round), `ai_instruction_versions`: the refinement flow\n"
            "- `ai_text_revised`: the editor revised the text; `ai_answerable`: the refined task passed the answerability check\n"
        )
