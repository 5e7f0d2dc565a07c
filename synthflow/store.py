"""Output store: Parquet (zstd) + rejects table + dataset card, written atomically.

Layout (HF-style, one folder per run)::

    <root>/<recipe>/<run_id>/data/train-00000-of-00001.parquet
    <root>/<recipe>/<run_id>/rejects/rejects-00000-of-00001.parquet
    <root>/<recipe>/<run_id>/README.md        (dataset card with HF YAML)
    <root>/<recipe>/<run_id>/summary.json, recipe.yaml, _SUCCESS

A run is assembled in ``<root>/.synthflow-staging/`` under names that do not end in ``.parquet``,
renamed into place as one folder, then each file is renamed to ``.parquet``. ``_SUCCESS`` comes last;
the ``examples``/``rejects`` views read only runs that have it.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from synthflow.funnel import funnel
from synthflow.model import public_model_name
from synthflow.record import Record, Reject, finish_reason

STAGING = ".synthflow-staging"
SUCCESS = "_SUCCESS"

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SAMPLING_TYPE = pa.struct(
    [
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("max_tokens", pa.int64()),
        ("seed", pa.int64()),
        ("stop", pa.list_(pa.string())),
    ]
)

# one entry per engine call that made the row: its prompt role, finish reason and sampling
STEPS_TYPE = pa.list_(
    pa.struct(
        [
            ("step", pa.string()),
            ("finish_reason", pa.string()),
            ("temperature", pa.float64()),
            ("max_tokens", pa.int64()),
        ]
    )
)

CORE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("messages", MESSAGE_TYPE),
    # TRL's conversational prompt-completion pair: the turns before the last assistant turn, and it
    ("prompt", MESSAGE_TYPE),
    ("completion", MESSAGE_TYPE),
    ("recipe", pa.string()),
    ("generator", pa.string()),
    ("run_id", pa.string()),
    ("seed_id", pa.string()),
    ("item", pa.int64()),
    ("split", pa.string()),
    ("model", pa.string()),
    ("engine", pa.string()),
    ("sampling", SAMPLING_TYPE),
    ("prompt_template", pa.string()),
    ("prompt_version", pa.string()),
    ("prompt_sha", pa.string()),
    ("verify_kind", pa.string()),
    ("verify_status", pa.string()),
    ("verify_mode", pa.string()),
    ("verify_exc_type", pa.string()),
    ("verify_message", pa.string()),
    ("verify_duration_s", pa.float64()),
    ("verify_details", pa.string()),
    ("verify_trusted", pa.bool_()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("engine_seconds", pa.float64()),
    ("cache_hit", pa.bool_()),
    ("finish_reason", pa.string()),
    ("steps", STEPS_TYPE),
]
REJECT_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("reject_stage", pa.string()),
    ("reject_reason", pa.string()),
    ("raw", pa.string()),
]


def run_schema(
    gen_columns: dict[str, pa.DataType], score_names: list[str], rejects: bool = False
) -> pa.Schema:
    cols = list(CORE_COLUMNS)
    cols += [(k, t) for k, t in gen_columns.items()]
    cols += [(f"score_{s}", pa.float64()) for s in score_names]
    if rejects:
        cols += REJECT_COLUMNS
    cols.append(("created_at", pa.timestamp("us", tz="UTC")))
    return pa.schema(cols)


def prompt_completion(messages: list[dict[str, Any]] | None) -> dict[str, Any]:
    """TRL's conversational prompt-completion columns of a conversation: ``prompt`` = the turns
    before the last assistant turn, ``completion`` = that turn (None when it does not end with one)."""
    if not messages or messages[-1].get("role") != "assistant":
        return {"prompt": None, "completion": None}
    return {"prompt": list(messages[:-1]), "completion": [messages[-1]]}


def record_row(
    r: Record, run_id: str, created_at: datetime, gen_columns: dict[str, pa.DataType]
) -> dict[str, Any]:
    g, v = r.gen, r.verdict
    s = g.get("sampling") or {}
    row: dict[str, Any] = {
        "id": r.id,
        "messages": r.messages,
        **prompt_completion(r.messages),
        "recipe": r.recipe,
        "generator": r.generator,
        "run_id": run_id,
        "seed_id": r.seed_id,
        "item": r.item,
        "split": r.fields.get("split") or "train",
        "model": g.get("model"),
        "engine": g.get("engine"),
        "sampling": {k: s.get(k) for k in ("temperature", "top_p", "max_tokens", "seed", "stop")}
        if s
        else None,
        "prompt_template": r.prompt_template,
        "prompt_version": r.prompt_version,
        "prompt_sha": g.get("prompt_sha"),
        "verify_kind": v.get("kind"),
        "verify_status": v.get("status"),
        "verify_mode": v.get("mode"),
        "verify_exc_type": v.get("exc_type"),
        "verify_message": v.get("message"),
        "verify_duration_s": v.get("duration_s"),
        "verify_details": v.get("details"),
        "verify_trusted": v.get("trusted"),
        "prompt_tokens": g.get("prompt_tokens"),
        "completion_tokens": g.get("completion_tokens"),
        "engine_seconds": g.get("engine_seconds"),
        "cache_hit": g.get("cache_hit"),
        "finish_reason": finish_reason(g),
        "steps": g.get("steps"),
        "created_at": created_at,
    }
    for k in gen_columns:
        row[k] = r.fields.get(k)
    for k, val in r.scores.items():
        row[f"score_{k}"] = val
    return row


def _write_shards(
    rows: list[dict[str, Any]], schema: pa.Schema, folder: Path, prefix: str, shard_rows: int
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-len(rows) // shard_rows))
    names = []
    for i in range(n):
        chunk = rows[i * shard_rows : (i + 1) * shard_rows]
        table = pa.Table.from_pylist(chunk, schema=schema)
        name = f"{prefix}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table, folder / (name + ".tmp"), compression="zstd")
        names.append(name)
    return names


class RunWriter:
    """Collects accepted rows and rejects for one run and publishes them atomically."""

    def __init__(
        self,
        root: Path,
        recipe: Any,
        run_id: str,
        gen_columns: dict[str, pa.DataType],
        score_names: list[str] | None = None,
    ):
        self.root = Path(root)
        self.recipe = recipe
        self.run_id = run_id
        self.gen_columns = gen_columns
        self.score_names = list(score_names or [])  # declared: the columns exist even with no rows
        self.accepted: list[Record] = []
        self.rejects: list[Reject] = []
        self.final_dir = self.root / recipe.name / run_id
        self.staging = self.root / STAGING / f"{recipe.name}--{run_id}"

    def add(self, accepted: list[Record], rejects: list[Reject]) -> None:
        self.accepted.extend(accepted)
        self.rejects.extend(rejects)

    def finalize(
        self, summary: dict[str, Any], artifacts: dict[str, Any] | None = None, card_extra: str = ""
    ) -> Path:
        now = datetime.now(UTC)
        scores = sorted(
            set(self.score_names)
            | {k for r in self.accepted for k in r.scores}
            | {k for j in self.rejects for k in j.record.scores}
        )
        data_schema = run_schema(self.gen_columns, scores)
        rej_schema = run_schema(self.gen_columns, scores, rejects=True)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        by_split: dict[str, list[dict[str, Any]]] = {}
        for r in self.accepted:
            row = record_row(r, self.run_id, now, self.gen_columns)
            by_split.setdefault(row["split"], []).append(row)
        if not by_split:
            by_split["train"] = []
        files: dict[str, list[str]] = {}
        for split, rows in sorted(by_split.items()):
            files[split] = _write_shards(
                rows, data_schema, self.staging / "data", split, self.recipe.output.shard_rows
            )
        rej_rows = []
        for j in self.rejects:
            row = record_row(j.record, self.run_id, now, self.gen_columns)
            row.update(reject_stage=j.stage, reject_reason=j.reason, raw=j.record.raw)
            rej_rows.append(row)
        rej_files = _write_shards(
            rej_rows, rej_schema, self.staging / "rejects", "rejects", self.recipe.output.shard_rows
        )
        (self.staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (self.staging / "recipe.yaml").write_text(
            yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False)
        )
        for name, obj in (artifacts or {}).items():
            (self.staging / name).write_text(json.dumps(obj, indent=2, default=str))
        (self.staging / "README.md").write_text(
            dataset_card(self.recipe, self.run_id, summary, list(files), data_schema, card_extra)
        )
        # publish: one folder rename, then each Parquet file becomes visible whole, then _SUCCESS
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)  # an earlier attempt of this run died while publishing
        os.replace(self.staging, self.final_dir)
        for name in rej_files:
            d = self.final_dir / "rejects"
            os.replace(d / (name + ".tmp"), d / name)
        for names in files.values():
            for name in names:
                d = self.final_dir / "data"
                os.replace(d / (name + ".tmp"), d / name)
        (self.final_dir / SUCCESS).write_text(now.isoformat())
        return self.final_dir


def dataset_card(
    recipe: Any, run_id: str, summary: dict[str, Any], splits: list[str], schema: pa.Schema, extra: str = ""
) -> str:
    meta = {
        "license": recipe.license,
        "task_categories": recipe.task_categories,
        "language": ["en"],
        "annotations_creators": ["machine-generated"],
        "tags": ["synthetic", "synthflow", recipe.name],
        "pretty_name": f"synthflow {recipe.name} ({run_id})",
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits],
            }
        ],
    }
    counts = summary.get("counts", {})
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# synthflow `{recipe.name}` run `{run_id}`",
        "",
        recipe.description.strip() or "Synthetic SFT data generated by synthflow.",
        "",
        f"- model: `{public_model_name(summary.get('model'))}` via `{summary.get('engine')}`",
        f"- generator: `{recipe.generator.name}`; recipe fingerprint `{summary.get('fingerprint')}`",
        f"- rows: {counts.get('accepted', 0)} accepted of {counts.get('generated', 0)} generated",
        *([f"- **{summary['shortfall']}**"] if summary.get("shortfall") else []),
        *sandbox_lines(summary),
        "",
        *decontam_lines(summary),
        "## Funnel",
        "",
        "Each stage's rows are the previous stage's rows minus the rows removed there.",
        "",
        "| stage | rows | removed here |",
        "|---|---|---|",
        f"| seeds | {counts.get('seeds', 0)} | |",
        *[f"| {f['stage']} | {f['rows']} | {_removed(f)} |" for f in funnel(summary)],
        "",
        "## Top reject reasons",
        "",
        "| stage | reason | rows |",
        "|---|---|---|",
        *[f"| {s} | `{r}` | {c} |" for s, r, c in summary.get("top_rejects", [])],
        "",
        *score_table(summary.get("scores") or {}),
        "## Columns",
        "",
        "`messages` is TRL's conversational format (`[{role, content}]`); `prompt` and `completion` are the "
        "same conversation in TRL's prompt-completion format (the turns before the last assistant turn, "
        "and that turn), so `SFTTrainer` trains on the answers only (`completion_only_loss`, its default "
        "for such data) with any tokenizer. Every other column is provenance:",
        "",
        *[f"- `{f.name}`: {f.type}" for f in schema],
        "",
        "Rejected rows, with `reject_stage` and `reject_reason`, are in `rejects/`.",
        "",
        extra,
    ]
    return "\n".join(lines).rstrip() + "\n"


def _removed(f: dict[str, Any]) -> str:
    parts = [f"{n} ({k})" for k, n in f["removed"].items()]
    if f.get("revisions"):
        parts.append(f"(incl. {f['revisions']} revisions)")
    if f.get("published_elsewhere"):
        parts.append(f"({f['published_elsewhere']} published first by an overlapping run)")
    if f.get("over_target"):
        parts.append(f"({f['over_target']} past the target)")
    if f.get("selected_out"):
        parts.append(f"({f['selected_out']} not selected)")
    return ", ".join(parts)


def decontam_lines(summary: dict[str, Any]) -> list[str]:
    """The benchmark sets the run was checked against, each with its hits (0 included)."""
    d = (summary.get("filters") or {}).get("decontaminate")
    if not d:
        return ["## Decontamination", "", "None: this recipe checks no benchmark set.", ""]
    return [
        "## Decontamination",
        "",
        f"Every row's {d.get('field', 'text')} was checked against these benchmark test sets "
        "(n-grams, task statements, word-pair overlap); hits are rejects.",
        "",
        "| benchmark | rows removed |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in (d.get("removed") or {}).items()],
        "",
    ]


def sandbox_lines(summary: dict[str, Any]) -> list[str]:
    """How the programs of this run were run and judged (the card says so when it was weak)."""
    v = (summary.get("filters") or {}).get("verify")
    if not v:
        return []
    line = (
        f"- verification: `{v.get('kind')}` in sandbox mode `{v.get('sandbox')}`"
        f" (seccomp {'on' if v.get('seccomp') else 'off'}); {v.get('verdicts_trusted', 0)} verdicts decided"
        f" outside the programs' reach, {v.get('verdicts_untrusted', 0)} not"
    )
    out = [line]
    if v.get("weak_sandbox"):
        out.append(
            "- **WEAK SANDBOX**: this run allowed a sandbox without namespaces (`allow_weak`); "
            "programs could reach the host and the verdicts are less trustworthy"
        )
    return out


def score_table(scores: dict[str, dict[str, Any]]) -> list[str]:
    """The card's score section: each score's distribution and what thresholds removed."""
    if not scores:
        return []
    lines = [
        "## Scores",
        "",
        "Over the rows that reached scoring (accepted, and rejected at accept time).",
        "",
        "| score | scored | null | min | median | max | accepted median | removed by thresholds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in scores.items():
        cells = [d.get(k, "") for k in ("min", "median", "max", "accepted_median")]
        lines.append(
            f"| `score_{name}` | {d['scored']} | {d['null']} | "
            + " | ".join(f"{c}" for c in cells)
            + f" | {d['removed']} |"
        )
    return [*lines, ""]


def completed_runs(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/*/{SUCCESS}"))


def table_files(root: Path, table: str) -> list[str]:
    """Parquet files of completed runs: table ``examples`` (data/) or ``rejects``."""
    sub = "data" if table == "examples" else "rejects"
    out: list[str] = []
    for run in completed_runs(root):
        out += [str(p) for p in sorted((run / sub).glob("*.parquet"))]
    return out
