"""A run's funnel from its summary: the one source of the stage counts that the CLI summary, the
dataset card, the report and the Prefect table show."""

from __future__ import annotations

from typing import Any

# the reject stages that take rows out between one funnel count and the next: each count is the
# previous one minus these rejects (a generator's own verify rejects, e.g. Bonito's, count at verify)
FUNNEL_REJECTS: dict[str, tuple[str, ...]] = {
    "parsed": ("parse", "generate", "revise"),
    "verified": ("verify",),
    "deduped": ("dedup", "decontam"),
    "scored": ("score",),
    "accepted": ("accept",),
}


def funnel(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's funnel, the one source of every surface (CLI, card, report, Prefect): per stage its
    rows and the rows removed there by reject stage. ``generated`` notes the revisions among its
    rows, ``accepted`` the rows past the target (``over_target``) and those a selection left out."""
    c, by_stage = summary.get("counts") or {}, summary.get("rejects_by_stage") or {}
    out = [{"stage": "generated", "rows": c.get("generated", 0), "removed": {},
            "revisions": sum(((summary.get("revision") or {}).get("tried") or {}).values())}]  # fmt: skip
    for stage, stages in FUNNEL_REJECTS.items():
        removed = {k: by_stage[k] for k in stages if by_stage.get(k)}
        row = {"stage": stage, "rows": c.get(stage, 0), "removed": removed}
        if stage == "deduped" and summary.get("dropped_at_publish"):
            row["published_elsewhere"] = summary["dropped_at_publish"]
        if stage == "accepted":
            row["over_target"] = summary.get("over_target", 0)
            row["selected_out"] = summary.get("selected_out", 0)
        out.append(row)
    return out


def funnel_text(summary: dict[str, Any]) -> str:
    """``seeds 40 -> generated 16 -> parsed 16 -> verified 2 (-14 verify) -> ...``"""
    parts = [f"seeds {(summary.get('counts') or {}).get('seeds', 0)}"]
    for f in funnel(summary):
        extra = [f"-{n} {k}" for k, n in f["removed"].items()]
        if f.get("revisions"):
            extra.append(f"incl. {f['revisions']} revisions")
        if f.get("published_elsewhere"):
            extra.append(f"{f['published_elsewhere']} of them published first by an overlapping run")
        if f.get("over_target"):
            extra.append(f"{f['over_target']} of them over target")
        parts.append(f"{f['stage']} {f['rows']}" + (f" ({', '.join(extra)})" if extra else ""))
    return " -> ".join(parts)
