"""``synthflow report``: one self-contained HTML page per run (or per recipe, across its runs).

Everything is inline: the plots are matplotlib SVGs, there is no script and no network access. A run
writes ``report.html`` next to its card when it publishes; ``synthflow report RUN_DIR`` rebuilds it
and ``synthflow report --recipe NAME`` draws the runs of a recipe over time.

Size: one section builder per plot, each short; they share the page's helpers (SVG export, table
rendering, escaping) and nothing else imports them.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from synthflow.atomic import atomic_path
from synthflow.errors import UserError
from synthflow.model import public_model_name
from synthflow.store import SUCCESS, completed_runs

FUNNEL = ("seeds", "generated", "parsed", "verified", "deduped", "scored", "accepted")
ACCEPT_COLOR, REJECT_COLOR = "#2b7bba", "#d95f02"


# ---- reading a run ------------------------------------------------------------------------------
def _rows(run_dir: Path, sub: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in sorted((run_dir / sub).glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def load_run(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not (run_dir / SUCCESS).is_file():
        raise UserError(f"{run_dir}: not a finished run (no {SUCCESS}); pass out/<recipe>/<run_id>")
    if not (run_dir / "data").is_dir():
        raise UserError(f"{run_dir}: no data/ folder, so not a complete synthflow run")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}/summary.json: unreadable ({e})") from None
    recipe = {}
    if (run_dir / "recipe.yaml").is_file():
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    return {"dir": run_dir, "summary": summary, "recipe": recipe, "data": _rows(run_dir, "data"),
            "rejects": _rows(run_dir, "rejects")}  # fmt: skip


# ---- plots ----------------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return '<figure class="plot">' + text[text.index("<svg") :] + "</figure>"


def _figure(w: float = 6.4, h: float = 3.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})  # text stays text: small files
    return plt.subplots(figsize=(w, h))


def funnel_plot(counts: dict[str, int]) -> str:
    fig, ax = _figure(6.4, 2.6)
    names = [k for k in FUNNEL if k in counts]
    vals = [counts[k] for k in names]
    ax.barh(names[::-1], vals[::-1], color=ACCEPT_COLOR)
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("rows")
    ax.set_title("funnel")
    return _svg(fig)


def score_plot(name: str, acc: list[float], rej: list[float], lo: float | None, hi: float | None) -> str:
    fig, ax = _figure(4.2, 2.6)
    vals = acc + rej
    bins = 20 if len(set(vals)) > 1 else 1
    rng = (min(vals), max(vals)) if len(set(vals)) > 1 else None
    if acc:
        ax.hist(acc, bins=bins, range=rng, alpha=0.6, color=ACCEPT_COLOR, label=f"accepted ({len(acc)})")
    if rej:
        ax.hist(rej, bins=bins, range=rng, alpha=0.6, color=REJECT_COLOR, label=f"rejected ({len(rej)})")
    for bound, label in ((lo, "min"), (hi, "max")):
        if bound is not None:
            ax.axvline(
                bound, color="black", linestyle="--", linewidth=1, label=f"threshold {label} {bound:g}"
            )
    ax.set_title(f"score_{name}")
    ax.legend(fontsize=7)
    return _svg(fig)


# fewer values than this get a table, not a histogram (ten bars of one point each say nothing)
MIN_POINTS = 10


def _stats(vals: list[float]) -> str:
    if not vals:
        return "-"
    v = sorted(vals)
    return f"{v[0]:g} / {v[len(v) // 2]:g} / {v[-1]:g}"


def hist_plot(
    title: str, series: dict[str, list[float]], limit: float | None = None, xlabel: str = ""
) -> str:
    fig, ax = _figure(6.4, 2.6)
    colors = [ACCEPT_COLOR, REJECT_COLOR, "#7570b3"]
    for (label, vals), c in zip(series.items(), colors, strict=False):
        if vals:
            ax.hist(vals, bins=30, alpha=0.6, color=c, label=f"{label} ({len(vals)})")
    if limit is not None:
        ax.axvline(limit, color="black", linestyle="--", linewidth=1, label=f"limit {limit:g}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
    return _svg(fig)


def bar_plot(title: str, counts: Counter, top: int = 30) -> str:
    items = counts.most_common(top)
    fig, ax = _figure(6.4, max(2.0, 0.18 * len(items) + 0.8))
    ax.barh([str(k)[:40] for k, _ in items][::-1], [v for _, v in items][::-1], color=ACCEPT_COLOR)
    ax.set_title(title)
    return _svg(fig)


def heatmap(title: str, pairs: Counter, top: int = 20) -> str:
    import numpy as np

    rows = [k for k, _ in Counter(a for (a, _b), n in pairs.items() for _ in range(n)).most_common(top)]
    cols = [k for k, _ in Counter(b for (_a, b), n in pairs.items() for _ in range(n)).most_common(top)]
    m = np.array([[pairs.get((r, c), 0) for c in cols] for r in rows])
    fig, ax = _figure(6.4, max(2.4, 0.25 * len(rows) + 1.2))
    im = ax.imshow(m, cmap="Blues", aspect="auto")
    ax.set_yticks(range(len(rows)), [str(r)[:30] for r in rows])
    ax.set_xticks(range(len(cols)), [str(c)[:30] for c in cols], rotation=60, ha="right")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return _svg(fig)


def trend_plot(title: str, runs: list[str], series: dict[str, list[float | None]]) -> str:
    fig, ax = _figure(6.4, 2.6)
    x = list(range(len(runs)))
    for label, vals in series.items():
        pts = [(i, v) for i, v in zip(x, vals, strict=True) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xticks(x, [r[:15] for r in runs], rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _svg(fig)


# ---- sections -------------------------------------------------------------------------------------
def _esc(v: Any, n: int = 400) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return html.escape(s if len(s) <= n else s[:n] + " …")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _chat(messages: list[dict[str, Any]] | None) -> str:
    turns = []
    for m in messages or []:
        role = html.escape(str(m.get("role", "")))
        turns.append(
            f'<div class="turn {role}"><b>{role}</b><pre>{_esc(m.get("content", ""), 1500)}</pre></div>'
        )
    return "".join(turns)


def _reason_head(reason: str) -> str:
    from synthflow.record import reason_head as head

    return head(reason or "")


def _thresholds(recipe: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    out: dict[str, tuple[float | None, float | None]] = {}
    for f in recipe.get("filters") or []:
        if f.get("name") == "thresholds":
            p = f.get("params") or f  # params sit beside the name in a recipe
            for k, v in (p.get("min") or {}).items():
                out[k] = (v, out.get(k, (None, None))[1])
            for k, v in (p.get("max") or {}).items():
                out[k] = (out.get(k, (None, None))[0], v)
    return out


def _pick(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """k rows spread over the list (deterministic)."""
    if len(rows) <= k:
        return rows
    step = len(rows) / k
    return [rows[int(i * step)] for i in range(k)]


def run_sections(run: dict[str, Any]) -> list[tuple[str, str]]:
    s, data, rej, recipe = run["summary"], run["data"], run["rejects"], run["recipe"]
    counts = s.get("counts") or {}
    sec: list[tuple[str, str]] = []
    acc_n = counts.get("accepted", len(data))

    # funnel and reject reasons with examples
    by_reason: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rej:
        by_reason[(r.get("reject_stage") or "", _reason_head(r.get("reject_reason") or ""))].append(r)
    top = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:12]
    rows = []
    for (stage, reason), rs in top:
        examples = " | ".join(
            (x.get("raw") or json.dumps(x.get("messages"), default=str))[:200] for x in _pick(rs, 3)
        )  # fmt: skip  (the table escapes each cell once)
        rows.append([stage, reason, len(rs), examples])
    short = s.get("shortfall")
    body = (f"<p><b>{html.escape(short)}</b></p>" if short else "") + funnel_plot(counts)
    body += "<h3>Top reject reasons</h3>"
    body += _table(["stage", "reason", "rows", "examples (raw, cut)"], rows) if rows else "<p>No rejects.</p>"
    sec.append(("Funnel and rejects", body))

    # scores
    thr = _thresholds(recipe)
    names = sorted({k[6:] for r in data + rej for k in r if k.startswith("score_")})
    plots, small = [], []
    for name in names:
        col = f"score_{name}"
        a = [float(v) for r in data if isinstance(v := r.get(col), (int, float)) and v == v]
        b = [float(v) for r in rej if isinstance(v := r.get(col), (int, float)) and v == v]
        lo, hi = thr.get(name, (None, None))
        bounds = " ".join(f"{k} {v:g}" for k, v in (("min", lo), ("max", hi)) if v is not None) or "-"
        if len(set(a + b)) == 1:  # a constant is a fact, not a distribution (nor a violation)
            small.append([f"score_{name}", f"constant {(a + b)[0]:g} ({len(a + b)} rows)", "", bounds])
        elif len(a) + len(b) >= MIN_POINTS:
            plots.append(score_plot(name, a, b, lo, hi))
        elif a or b:
            small.append([f"score_{name}", _stats(a), _stats(b), bounds])
    body = "".join(plots)
    if small:
        body += (f"<p>Scores with fewer than {MIN_POINTS} values, or one value, as a table "
                 "(min / median / max):</p>") + _table(["score", "accepted", "rejected", "thresholds"], small)  # fmt: skip
    sec.append(("Scores", body or "<p>No row was scored.</p>"))

    # token lengths
    sft = (s.get("filters") or {}).get("sft") or {}
    a = [r["n_tokens"] for r in data if r.get("n_tokens") is not None]
    b = [r["n_tokens"] for r in rej if r.get("n_tokens") is not None]
    note = f"<p>Chat template of <code>{_esc(public_model_name(sft.get('tokenizer')))}</code>.</p>"
    if len(a) + len(b) >= MIN_POINTS:
        body = hist_plot("tokens per row (chat template)", {"accepted": a, "rejected": b},
                         sft.get("max_seq_len"), "tokens")  # fmt: skip
    elif a or b:
        body = _table(["tokens per row (chat template)", "accepted", "rejected", "limit"],
                      [["min / median / max", _stats(a), _stats(b), sft.get("max_seq_len")]])  # fmt: skip
    else:
        body = "<p>No token lengths (no row reached the SFT check).</p>"
    pt = [r["prompt_tokens"] for r in data if r.get("prompt_tokens")]
    ct = [r["completion_tokens"] for r in data if r.get("completion_tokens")]
    if len(pt) + len(ct) >= MIN_POINTS:
        body += hist_plot("engine tokens per accepted row", {"prompt": pt, "completion": ct}, None, "tokens")
    elif pt or ct:
        body += _table(["engine tokens per accepted row", "prompt", "completion"],
                       [["min / median / max", _stats(pt), _stats(ct)]])  # fmt: skip
    sec.append(("Token lengths", note + body))

    # coverage
    cov = []
    skills = Counter(x for r in data for x in (r.get("skills") or []))
    if skills:
        cov.append(bar_plot("SkillMix: skills in accepted rows", skills))
        pairs = Counter((a_, b_) for r in data for a_ in (r.get("skills") or []) for b_ in (r.get("skills") or [])
                        if a_ < b_)  # fmt: skip
        if pairs:
            sym = Counter()
            for (a_, b_), n in pairs.items():
                sym[(a_, b_)] += n
                sym[(b_, a_)] += n
            cov.append(heatmap("SkillMix: skill x skill pairs", sym))
    ai = Counter((r.get("ai_skill"), r.get("ai_transformation")) for r in data if r.get("ai_skill"))
    if ai:
        cov.append(heatmap("AgentInstruct: skill x transformation", ai))
    ids = Counter(x for r in data for x in (r.get("instruction_id_list") or []))
    if ids:
        cov.append(bar_plot("constraints in accepted rows", ids))
    for col, title in (
        ("task_type", "task types"),
        ("template_id", "templates"),
        ("split", "splits"),
        ("cluster_id", "select: cluster sizes"),
    ):
        c = Counter(r.get(col) for r in data if r.get(col) is not None)
        if c and (col != "split" or len(c) > 1 or "template_id" in (data[0] if data else {})):
            cov.append(bar_plot(title, c))
    sec.append(("Coverage", "".join(cov) or "<p>No coverage columns in this run's rows.</p>"))

    # dedup and decontamination
    groups: dict[str, list[float]] = defaultdict(list)
    contam: Counter = Counter()
    for r in rej:
        reason = r.get("reject_reason") or ""
        parts = reason.split(":")
        if reason.startswith(("dedup:near:", "dedup:near_short:")) and len(parts) >= 4:
            try:
                groups[parts[2]].append(float(parts[-1].split("=")[1]))
            except (IndexError, ValueError):
                groups[parts[2]].append(float("nan"))
        elif reason.startswith("dedup:exact:") and len(parts) >= 3:
            groups[parts[2]].append(1.0)
        elif reason.startswith("contaminated:") and len(parts) >= 2:
            contam[parts[1]] += 1
    gr = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:10]
    body = _table(["kept row", "duplicates dropped", "Jaccard"],
                  [[k, len(v), ", ".join(f"{x:.2f}" for x in v[:8])] for k, v in gr]) if gr else "<p>No duplicates.</p>"  # fmt: skip
    body += "<h3>Decontamination hits per benchmark</h3>"
    checked = ((s.get("filters") or {}).get("decontaminate") or {}).get("removed") or {}
    per_set = {**dict.fromkeys(checked, 0), **contam}  # every set checked, hits or not
    body += (
        _table(["benchmark", "rows"], [[k, v] for k, v in sorted(per_set.items(), key=lambda kv: -kv[1])])
        if per_set
        else "<p>No benchmark set checked.</p>"
    )
    sec.append(("Dedup and decontamination", body))

    # cost
    tok = s.get("tokens") or {}
    eng = s.get("engine_seconds") or 0.0
    rows = [["accepted rows", acc_n], ["prompt tokens", tok.get("prompt", 0)],
            ["completion tokens", tok.get("completion", 0)], ["engine seconds", eng]]  # fmt: skip
    if acc_n:
        rows += [["prompt tokens per accepted row", round(tok.get("prompt", 0) / acc_n, 1)],
                 ["completion tokens per accepted row", round(tok.get("completion", 0) / acc_n, 1)],
                 ["engine seconds per accepted row", round(eng / acc_n, 2)]]  # fmt: skip
    price = (recipe.get("engine") or {}).get("price_per_mtok") or {}
    if price:
        money = tok.get("prompt", 0) / 1e6 * float(price.get("prompt", 0)) + tok.get(
            "completion", 0
        ) / 1e6 * float(price.get("completion", 0))
        rows.append(["cost (price_per_mtok)", round(money, 4)])
        if acc_n:
            rows.append(["cost per accepted row", round(money / acc_n, 6)])
    for role, u in (s.get("roles") or {}).items():
        if role != "generator":
            rows.append(
                [
                    f"{role}: tokens (prompt + completion)",
                    u.get("prompt_tokens", 0) + u.get("completion_tokens", 0),
                ]
            )
    sec.append(("Cost", _table(["", "value"], rows)))

    # samples
    body = "".join(f'<div class="row"><p class="id">{_esc(r.get("id"))}</p>{_chat(r.get("messages"))}</div>'
                   for r in _pick(data, 5)) or "<p>No accepted rows.</p>"  # fmt: skip
    body += "<h3>Rejects</h3>" + "".join(
        f'<div class="row"><p class="id">{_esc(r.get("reject_stage"))}: {_esc(r.get("reject_reason"), 200)}</p>'
        f'<pre>{_esc(r.get("raw") or "", 800)}</pre></div>' for r in _pick(rej, 5)
    )  # fmt: skip
    sec.append(("Sample rows", body))
    return sec


CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left}figure.plot{display:inline-block;margin:.3em}figure.plot svg{max-width:100%;
height:auto}pre{white-space:pre-wrap;background:#f6f6f6;padding:4px;margin:2px 0;font-size:12px}
.row{border-left:3px solid #2b7bba;padding-left:8px;margin:8px 0}.id{color:#666;font-size:12px;margin:0}
nav a{margin-right:1em}"""


def page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    nav = "".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "".join(
        f'<section id="s{i}"><h2>{html.escape(t)}</h2>{b}</section>' for i, (t, b) in enumerate(sections)
    )
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{subtitle}</p>"
            f"<nav>{nav}</nav>{body}</body></html>")  # fmt: skip


def run_report(run_dir: Path) -> str:
    run = load_run(run_dir)
    s = run["summary"]
    c = s.get("counts") or {}
    sub = (f"model <code>{_esc(public_model_name(s.get('model')))}</code> via {_esc(s.get('engine'))}; "
           f"{c.get('accepted', 0)} accepted of {c.get('generated', 0)} generated; "
           f"recipe fingerprint <code>{_esc(s.get('fingerprint'))}</code>")  # fmt: skip
    return page(f"synthflow {s.get('recipe')} run {s.get('run_id')}", sub, run_sections(run))


def recipe_report(root: Path, recipe: str) -> str:
    runs = [d for d in completed_runs(Path(root)) if d.parent.name == recipe]
    if not runs:
        known = sorted({d.parent.name for d in completed_runs(Path(root))})
        hint = f" (recipes with runs here: {', '.join(known)})" if known else ""
        raise UserError(f"--recipe {recipe}: no finished runs under {root}{hint}")
    sums = []
    for d in runs:
        try:
            sums.append(json.loads((d / "summary.json").read_text()))
        except (OSError, ValueError):
            continue
    sums.sort(key=lambda s: s.get("run_id", ""))
    ids = [s.get("run_id", "?") for s in sums]
    acc = [float((s.get("counts") or {}).get("accepted", 0)) for s in sums]
    gen = [float((s.get("counts") or {}).get("generated", 0)) for s in sums]
    yields = [a / g if g else None for a, g in zip(acc, gen, strict=True)]
    cost = [
        ((s.get("tokens") or {}).get("completion", 0) / a) if a else None
        for s, a in zip(sums, acc, strict=True)
    ]
    names = sorted({k for s in sums for k, d in (s.get("scores") or {}).items() if "accepted_median" in d})
    medians = {
        n: [((s.get("scores") or {}).get(n) or {}).get("accepted_median") for s in sums] for n in names
    }
    sections = [
        ("Accepted rows", trend_plot("accepted rows per run", ids, {"accepted": acc})),
        ("Yield", trend_plot("accepted / generated", ids, {"yield": yields})),
        (
            "Score medians (accepted rows)",
            trend_plot("median score", ids, medians) if names else "<p>No scores.</p>",
        ),
        ("Cost per row", trend_plot("completion tokens per accepted row", ids, {"tokens/row": cost})),
        (
            "Runs",
            _table(
                ["run", "accepted", "generated", "yield"],
                [
                    [i, int(a), int(g), f"{y:.1%}" if y is not None else ""]
                    for i, a, g, y in zip(ids, acc, gen, yields, strict=True)
                ],
            ),
        ),  # fmt: skip
    ]
    return page(f"synthflow {recipe}: {len(sums)} runs", f"under <code>{_esc(str(root))}</code>", sections)


def write(path: Path, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)  # readable like the rest of the run folder
    return path


def cmd_report(a: Any) -> int:
    if a.recipe:
        out = Path(a.out or Path(a.root) / f"{a.recipe}-report.html")
        write(out, recipe_report(Path(a.root), a.recipe))
    else:
        if not a.run_dir:
            raise UserError("report: give a run folder (out/<recipe>/<run_id>) or --recipe NAME")
        out = Path(a.out or Path(a.run_dir) / "report.html")
        write(out, run_report(Path(a.run_dir)))
    print(f"wrote {out} ({out.stat().st_size // 1024} KB); open it in a browser")
    return 0


def add_parser(sub: Any) -> None:
    import os

    r = sub.add_parser(
        "report",
        help="an HTML report of a run (plots inline, no network), or of a recipe's runs over time",
    )
    r.add_argument("run_dir", nargs="?", help="a finished run folder, out/<recipe>/<run_id>")
    r.add_argument("--recipe", help="every finished run of this recipe under --root: one point per run")
    r.add_argument(
        "--root", default=os.environ.get("OUT", "out"), help="output root for --recipe (default ./out)"
    )
    r.add_argument(
        "--out", help="HTML file to write (default: RUN_DIR/report.html or ROOT/RECIPE-report.html)"
    )
    r.set_defaults(fn=cmd_report)
