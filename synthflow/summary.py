"""A run's summary: built once from its ledger and stages (``summary.json``, the card, the report
and the CLI all read this dict), and its one-screen text form."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

from synthflow import revise as revising
from synthflow.engines.pool import usage_fields, usage_of, usage_totals
from synthflow.funnel import funnel_text
from synthflow.ledger import FUNNEL, Ledger
from synthflow.personas import diversity
from synthflow.record import Record, Reject
from synthflow.spec import RunSpec
from synthflow.stages import Stages


def build(spec: RunSpec, ledger: Ledger, st: Stages) -> dict[str, Any]:
    recipe = spec.recipe
    counts = {k: ledger.counts.get(k, 0) for k in FUNNEL}
    counts["accepted"] = len(ledger.accepted)
    heads = Counter((j.stage, j.head) for j in ledger.rejects)
    e = st.engine
    wall = time.time() - ledger.started
    pool = st.engines
    ready = (pool.ready_at - ledger.started) if pool.ready_at is not None else None
    # the generation roles (the recipe's engine, an ensemble's members) and the shards' engines
    engines = {id(e): e, **{id(g): g for g in st.generator.generation_engines()}}
    use = usage_totals([g.usage() for g in engines.values()] + [usage_of(s) for s in ledger.shard_reports])
    out = {
        "recipe": recipe.name,
        "run_id": spec.run_id,
        "fingerprint": spec.fingerprint,
        "resumed": spec.resumed,
        "engine": e.name,
        "model": e.model_id,
        "counts": counts,
        "items_planned": ledger.planned,
        "item_offset": spec.item_start,
        "items_discarded": ledger.discarded,
        "over_target": ledger.counts.get("over_target", 0),
        "selected_out": ledger.counts.get("selected_out", 0),
        "dropped_at_publish": ledger.counts.get("dropped_at_publish", 0),
        "top_rejects": [(s, r, c) for (s, r), c in heads.most_common(8)],
        "rejects_by_stage": dict(Counter(j.stage for j in ledger.rejects)),
        **usage_fields(use),
        "output_tokens_per_s": round(use["completion_tokens"] / use["engine_seconds"], 1)
        if use["engine_seconds"]
        else None,
        "stage_seconds": {k: round(v, 2) for k, v in ledger.seconds.items()},
        "generate_seconds": round(ledger.seconds.get("generate", 0.0), 2),
        "wall_seconds": round(wall, 1),
        "pipeline": recipe.pipeline,
        "timing": {
            "wall_s": round(wall, 2),
            "engine_ready_s": round(ready, 2) if ready is not None else None,
            "engine_busy_s": round(pool.busy_s, 2),
        },
        "generator": st.generator.summary(ledger.accepted),
        "diversity": _diversity(ledger, st),
        "revision": revising.summary(
            ledger.accepted, ledger.revision_tried, recipe.revise.rounds, ledger.rejects
        )
        if recipe.revise
        else None,
        "filters": st.filter_summaries(),
        "roles": pool.usage(),
        "scores": score_stats(ledger.accepted, ledger.rejects, st.writer.score_names),
    }
    if ledger.shard_reports:
        out["shards"] = ledger.shard_reports
    out["target"] = recipe.n
    out["budget"] = recipe.budget
    out["shortfall"] = shortfall(out)
    return out


def shortfall(s: dict[str, Any]) -> str | None:
    """One line when a run published fewer rows than asked: how many, why it stopped, what to change."""
    asked, got = s.get("target"), s["counts"]["accepted"]
    if asked is None or got >= asked:
        return None
    spent = s["items_planned"] >= (s.get("budget") or 0)
    why = f"the budget of {s['budget']} items was spent" if spent else "the run stopped before its budget"
    top = ", ".join(f"{r} ({n})" for _, r, n in (s.get("top_rejects") or [])[:3])
    late = s.get("dropped_at_publish") or 0
    return (
        f"target not met: accepted {got} of {asked}; {why}"
        + (f"; {late} rows were published first by an overlapping run" if late else "")
        + (f"; top rejects: {top}" if top else "")
        + (
            "; run the recipe again to add rows"
            if late
            else "; raise --max-items, use a larger model, or relax the recipe's thresholds"
        )
    )


def _diversity(ledger: Ledger, st: Stages) -> dict[str, Any]:
    """Distinct-n of the generator's text field: over accepted rows, and over every row that got
    past parsing (on one budget, the figure to compare runs with and without personas)."""
    field = st.generator.text_field
    parsed = list(ledger.accepted) + [j.record for j in ledger.rejects if j.stage != "parse"]
    out = {
        "field": field,
        "accepted": diversity([r.text_for(field) for r in ledger.accepted]),
        "parsed": diversity([t for r in parsed if (t := r.text_for(field).strip())]),
    }
    if st.generator.personas:
        out["distinct_personas"] = len({r.fields.get("persona") for r in ledger.accepted} - {None})
    return out


def score_stats(
    accepted: list[Record], rejects: list[Reject], declared: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Each score over the rows that reached scoring (accepted, and rejected at accept time):
    min / median / max, nulls, the accepted rows' median, and how many rows thresholds removed."""
    rows = [r.scores for r in accepted] + [j.record.scores for j in rejects if j.stage == "accept"]
    removed = Counter(
        j.kind.split(":", 1)[1] for j in rejects if j.stage == "accept" and j.kind.startswith("quality:")
    )
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({k for s in rows for k in s} | set(declared or [])):
        vals = [v for s in rows if (v := s.get(name)) is not None and v == v]
        acc = [v for r in accepted if (v := r.scores.get(name)) is not None and v == v]
        d: dict[str, Any] = {
            "scored": len(vals),
            "null": len(rows) - len(vals),
            "removed": removed.get(name, 0),
        }
        if vals:
            d.update(
                min=round(min(vals), 4), median=round(statistics.median(vals), 4), max=round(max(vals), 4)
            )
        if acc:
            d["accepted_median"] = round(statistics.median(acc), 4)
        out[name] = d
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"run {s['run_id']} of recipe {s['recipe']}" + (" (resumed)" if s.get("resumed") else ""),
        f"  dataset: {s.get('path', '?')}",
        f"  engine: {s['engine']}  model: {s['model']}",
        "  funnel: " + funnel_text(s),
        f"  cache: {s['cache']['hits']} hits, {s['cache']['misses']} generated; "
        f"tokens: {s['tokens']['prompt']} prompt, {s['tokens']['completion']} completion; "
        f"engine {s['engine_seconds']} s"
        + (f" ({s['output_tokens_per_s']} output tok/s)" if s.get("output_tokens_per_s") else ""),
    ]
    if s.get("shortfall"):
        lines.append(f"  {s['shortfall']}")
    if s["top_rejects"]:  # the top 5 here; every reject is in rejects/, the top 8 in summary.json
        lines.append("  top reject reasons:")
        lines += [f"    {n:6d}  {st:8s} {r}" for st, r, n in s["top_rejects"][:5]]
    v = (s.get("filters") or {}).get("verify")
    if v:
        weak = "  WEAK SANDBOX (allow_weak)" if v.get("weak_sandbox") else ""
        lines.append(
            f"  verification: {v['kind']} in {v['sandbox']} (seccomp {'on' if v.get('seccomp') else 'off'}); "
            f"verdicts trusted {v.get('verdicts_trusted', 0)}, untrusted {v.get('verdicts_untrusted', 0)}{weak}"
        )
    for role, u in (s.get("roles") or {}).items():
        if role != "generator":
            lines.append(
                f"  {role}: {u['engine']} {u['model']}: {u['misses']} calls, {u['hits']} cached; "
                f"tokens {u['prompt_tokens']} prompt, {u['completion_tokens']} completion; {u['engine_seconds']} s"
            )
    scores = s.get("scores") or {}
    if scores and not any("median" in d for d in scores.values()):  # one line, not one per score
        lines.append(f"  scores: no row was scored ({', '.join(scores)})")
    elif scores:
        lines.append(
            "  scores (min / median / max over scored rows; accepted median; removed by thresholds):"
        )
        for name, d in s["scores"].items():
            if "median" not in d:
                lines.append(f"    {name:16s} no value ({d['null']} rows scored)")
                continue
            null = f", {d['null']} null" if d["null"] else ""
            lines.append(
                f"    {name:16s} {d['min']:g} / {d['median']:g} / {d['max']:g}; "
                f"accepted {d.get('accepted_median', float('nan')):g}; removed {d['removed']}{null}"
            )
    for k, v in (s.get("generator") or {}).items():
        if not isinstance(v, (dict, list)):  # full tables stay in summary.json
            lines.append(f"  {k}: {v}")
    rv = s.get("revision")
    if rv:
        per = ", ".join(f"{k} {v}" for k, v in sorted(rv["rescued"].items())) or "none"
        late = sum((rv.get("passed_over_target") or {}).values())
        lines.append(
            f"  revision: {sum(rv['tried'].values())} tried, {rv['rescued_rows']} rescued ({per})"
            + (f"; {late} more passed every check after the target was reached" if late else "")
        )
    dv = s.get("diversity") or {}
    if (dv.get("parsed") or {}).get("rows"):
        p = dv["parsed"]
        lines.append(
            f"  diversity of {dv['field']} over {p['rows']} parsed rows: distinct-1/2/3 "
            f"{p['distinct_1']} / {p['distinct_2']} / {p['distinct_3']}"
            + (
                f"; {dv['distinct_personas']} personas among accepted rows"
                if "distinct_personas" in dv
                else ""
            )
        )
    t = s.get("timing") or {}
    if t.get("engine_ready_s") is not None:
        after = t["wall_s"] - t["engine_ready_s"]
        share = t["engine_busy_s"] / after if after > 0 else 0.0
        lines.append(
            f"  engine busy {t['engine_busy_s']:g} s of the {after:.1f} s after it was ready "
            f"(ready at {t['engine_ready_s']:g} s): {share:.0%}"
            f"; pipeline {'on' if s.get('pipeline') else 'off'}"
            + (f", {s['items_discarded']} items made ahead and discarded" if s.get("items_discarded") else "")
        )
    for sh in s.get("shards") or []:
        lines.append(
            f"  shard {sh['shard']} on {sh['host']}: {len(sh['batches'])} batches, "
            f"{sh['cache']['misses']} generated, {sh['cache']['hits']} cached, engine {sh['engine_seconds']} s"
        )
    lines.append(f"  wall time: {s['wall_seconds']} s")
    return "\n".join(lines)
