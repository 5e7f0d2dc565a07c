"""CoachLM-style revision (Liu et al., 2023, "CoachLM: Automatic Instruction Revisions Improve the
Data Quality in LLM Instruction Tuning"): instead of discarding a row rejected for a fixable reason
(a low judge score, a shirking answer, a failed verification with its error message), the model
sees the pair, the reason and a revision rubric, and rewrites it.

A revised row is a new record (``revised_from`` names the original, which stays in the rejects
table) that goes through the same verify -> dedup -> score -> accept path again; nothing is taken
on trust because it was revised. A row that fails again may be revised again, up to the recipe's
``revise.rounds``.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from typing import Any

import pyarrow as pa

from synthflow.generators.base import ParseError, add_usage
from synthflow.prompts import load_prompt
from synthflow.record import Record, Reject, StageResult, stable_id

COLUMNS: dict[str, pa.DataType] = {
    "revised_from": pa.string(),
    "revision_round": pa.int32(),
    "revision_reason": pa.string(),
    "revision_original": pa.string(),  # the original row's messages, as JSON
    "revision_prompt": pa.string(),
}
STAGE = "revise"


def fixable(reason: str, prefixes: list[str]) -> bool:
    return any(reason.startswith(p) for p in prefixes)


def reviewer_notes(rec: Record) -> str:
    """What the reviewer said beyond the reason: the verifier's error, the judge's rationale."""
    v = rec.verdict or {}
    parts = []
    if v.get("exc_type") or v.get("message"):
        parts.append(f"{v.get('exc_type') or ''}: {v.get('message') or ''}".strip(": "))
    if rec.fields.get("judge_rationale"):
        parts.append(str(rec.fields["judge_rationale"]))
    return " ".join(" ".join(parts).split())[:600]


_EDIT_VERBS = r"(?:re-?written|re-?wrote|rewrit(?:e|ing)|revised?|revising|rephrased|reworked|fixed|corrected|improved|updated|edited|addressed)"
_META = re.compile(
    # "I've rewritten the response", "we have now fixed", "I also corrected"
    rf"\b(?:i|we|you)(?:'ve|'d| have| had)?(?: \w+ly| also| now| just| already)? {_EDIT_VERBS}\b"
    # "the revised response", "**Improved answer:**", "a better version of the answer"
    r"|\b(?:re-?written|revised|improved|updated|corrected|better|new) (?:response|answer)\b"
    r"|\bversion of (?:the|my|this) (?:response|answer)\b"
    r"|\b(?:original|previous|initial|earlier|first|old) (?:response|answer|output)\b"
    r"|\b(?:reviewer|checker|judge)s?(?:'s|')? (?:reason|notes?|feedback|comments?|rationale|pointed|rejected|said)\b"
    r"|\bchanges made\b|\b(?:based on|address(?:es|ing)?) (?:the|your) (?:feedback|notes|reason)\b"
    r"|\bhas been (?:re-?written|revised|reworked|corrected|fixed|improved)\b"
    r"|^\W*(?:revised|rewritten|improved|updated|corrected) (?:response|answer|version)\W*$",
    re.I | re.M,
)


def _stem(w: str) -> str:
    """ "rewritten", "rewrite", "rewrote" -> "rewrit"; "fixed" -> "fix"."""
    w = w.lower().replace("-", "")
    for suffix in ("ten", "ing", "ed", "es", "e", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    return "rewrit" if w == "rewrot" else w


def talks_about_revising(messages: list[dict[str, str]]) -> bool:
    """A revised answer that speaks about the revision ("I've rewritten the response to fix ...",
    "the original answer ...", "Reviewer's notes: ...") instead of answering: the rubric leaked
    into the row. An edit verb the user's own turns ask for ("Rewrite this sentence" ->
    "Rewritten: ...", "Fix the bug" -> "I've fixed ...") does not count."""
    answer = (messages[-1]["content"] if messages else "").replace("\u2019", "'")
    asked = {_stem(w) for m in messages[:-1] for w in re.findall(r"[a-z][a-z-]*", m["content"].lower())}
    for m in _META.finditer(answer):
        verbs = re.findall(_EDIT_VERBS, m.group(0), re.I)
        if verbs and all(_stem(v) in asked for v in verbs):
            continue  # the user asked for this edit
        return True
    return False


def revise(gen: Any, engine: Any, sampling: Any, rejects: list[Reject], rnd: int, cfg: Any) -> StageResult:
    """One revision round over the fixable ``rejects``: one engine call for all of them. The kept
    records are the revised rows (to be checked again); revisions that do not parse are rejects."""
    out = StageResult()
    todo = [j for j in rejects if fixable(j.reason, cfg.reasons)]
    if not todo:
        return out
    tmpl = load_prompt(cfg.prompt or gen.revise_prompt)
    reqs = []
    for j in todo:
        ctx = {**gen.revision_context(j.record), "reason": j.reason, "detail": reviewer_notes(j.record)}
        reqs.append(gen.request("revise", tmpl.render(**ctx), rnd))
    for j, req, comp in zip(todo, reqs, gen.call(engine, "revise", reqs, sampling), strict=True):
        orig = j.record
        rec = copy.deepcopy(orig)
        rec.id = stable_id(orig.id, "revision", rnd)
        rec.verdict, rec.scores = {}, {}
        for k in [k for k in rec.fields if k.startswith(("judge_", "sft_"))]:
            rec.fields.pop(k)
        rec.raw = req.prefill + comp.text
        add_usage(rec, comp)
        first = orig.fields.get("revised_from") or orig.id
        rec.fields.update(
            revised_from=first,
            revision_round=rnd,
            revision_reason=j.reason,
            revision_original=orig.fields.get("revision_original") or json.dumps(orig.messages),
            revision_prompt=tmpl.label,
        )
        if comp.finish_reason == "length":
            out.rejects.append(Reject(rec, STAGE, "revise:truncated"))
            continue
        try:
            gen.apply_revision(rec, rec.raw)
        except ParseError as e:
            out.rejects.append(Reject(rec, STAGE, f"revise:{e}"))
            continue
        if talks_about_revising(rec.messages):
            out.rejects.append(Reject(rec, STAGE, "revise:meta"))
            continue
        out.kept.append(rec)
    gen.after_revision(out.kept, engine, sampling)
    return out


def summary(accepted: list[Record], tried: Counter, rounds: int, rejects: Any = ()) -> dict[str, Any]:
    """Rows revision rescued, per reason head (``verify:answer_mismatch``, ``quality:judge``, ...),
    and revisions that passed every check but came after the run had its ``n`` rows."""
    rescued = Counter(head(r.fields["revision_reason"]) for r in accepted if r.fields.get("revised_from"))
    late = Counter(
        head(j.record.fields["revision_reason"])
        for j in rejects
        if j.reason == "over_target" and j.record.fields.get("revised_from")
    )
    return {
        "rounds": rounds,
        "tried": dict(tried),
        "rescued": dict(rescued),
        "rescued_rows": sum(rescued.values()),
        "passed_over_target": dict(late),
    }


def head(reason: str) -> str:
    """A revision reason's kind (``quality:judge``), as ``revise.reasons`` names them."""
    from synthflow.record import reason_kind

    return reason_kind(reason)
