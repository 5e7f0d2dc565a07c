"""``synthflow score`` (score existing rows, or re-score a published run) and ``synthflow train-scorer``.

Size: two commands with their readers, writers and options; each function is short, and splitting
the two apart would only move their shared row handling into a third module."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthflow.atomic import atomic_path
from synthflow.errors import UserError, positive_int
from synthflow.record import Record, stable_id
from synthflow.store import SUCCESS


# ---- reading rows ------------------------------------------------------------------------------
def is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / SUCCESS).is_file() and (p / "data").is_dir()


def _read_table(path: Path) -> pa.Table:
    from synthflow.dedup.decontam import read_rows

    if path.suffix == ".parquet":
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    rows = read_rows(path)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{path}: row {bad + 1} is not a JSON object")
    from synthflow.rows import rows_table

    return rows_table(rows, path)


def input_files(inputs: list[str], with_rejects: bool = False) -> list[Path]:
    """Files behind the inputs: JSONL (.gz) or Parquet files, or a finished run's Parquet files."""
    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            if not is_run_dir(p):
                raise UserError(f"{p}: a folder must be a finished synthflow run (with {SUCCESS} and data/)")
            out += sorted((p / "data").glob("*.parquet"))
            if with_rejects:
                out += sorted((p / "rejects").glob("*.parquet"))
        elif not p.exists():
            raise UserError(f"{p}: file not found")
        else:
            out.append(p)
    return out


def read_inputs(inputs: list[str], fields: tuple[str, ...] = (), with_rejects: bool = False) -> pa.Table:
    """All rows as one table (columns unified by name). Every file must have ``fields``."""
    tables = []
    for f in input_files(inputs, with_rejects):
        t = _read_table(f)
        for name in fields:
            if t.num_rows and name not in t.column_names:
                raise UserError(f"{f}: no field {name!r} (fields: {', '.join(t.column_names[:12])})")
        tables.append(t)
    if not tables or not sum(t.num_rows for t in tables):
        raise UserError(f"{', '.join(inputs)}: no input rows")
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise UserError(f"inputs do not share column types: {str(e).splitlines()[0]}") from None


def _texts(table: pa.Table, field: str, role: str) -> list[str]:
    """One text per row: a column's strings, or the first user / last assistant turn of ``messages``."""
    values = table.column(field).to_pylist()
    if field == "messages":
        out = []
        for v in values:
            turns = [m for m in (v or []) if isinstance(m, dict) and m.get("role") == role]
            m = (turns[0] if role == "user" else turns[-1]) if turns else {}
            out.append(str(m.get("content") or ""))
        return out
    return ["" if v is None else v if isinstance(v, str) else json.dumps(v, default=str) for v in values]


def to_records(table: pa.Table, instruction_field: str, response_field: str) -> list[Record]:
    """Records for scorers: the chosen instruction and response as a user and an assistant turn
    (only the columns scorers read are converted from Arrow)."""
    n = table.num_rows
    names = set(table.column_names)

    def col(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in names else [None] * n

    instrs, resps = _texts(table, instruction_field, "user"), _texts(table, response_field, "assistant")
    ids, gens, answers, finishes = col("id"), col("generator"), col("answer"), col("finish_reason")
    recs = []
    for i in range(n):
        instr, resp = instrs[i], resps[i]
        rec = Record(
            id=str(ids[i]) if ids[i] is not None else stable_id("row", i, instr, resp),
            recipe="",
            generator=str(gens[i] or ""),
            seed_id="",
            messages=[{"role": "user", "content": instr}, {"role": "assistant", "content": resp}],
        )
        if answers[i] is not None:
            rec.fields["answer"] = answers[i]
        if finishes[i]:
            rec.gen["finish_reason"] = finishes[i]
        recs.append(rec)
    return recs


# ---- scoring -------------------------------------------------------------------------------------
def _scoring_spec(a: Any) -> dict[str, dict[str, Any]]:
    import yaml

    spec: dict[str, dict[str, Any]] = {s: {} for s in a.scorer}
    for kv in a.param or []:
        key, sep, val = kv.partition("=")
        name, dot, param = key.partition(".")
        if not sep or not dot:
            raise UserError(f"--param {kv!r}: use SCORER.KEY=VALUE, e.g. judge.sample=0.2")
        if name not in spec:
            raise UserError(f"--param {kv!r}: scorer {name!r} is not among --scorer {', '.join(spec)}")
        spec[name][param] = yaml.safe_load(val)
    return spec


def _context(a: Any) -> Any:
    from synthflow.recipe import EngineConfig
    from synthflow.registry import validate_model
    from synthflow.scoring import ScoreContext

    cfg: dict[str, Any] = {}
    for key in ("engine", "model", "base_url"):
        v = getattr(a, key, None)
        if v:
            cfg["name" if key == "engine" else key] = v
    engine = validate_model(EngineConfig, cfg, "--engine")
    return ScoreContext(generator_engine=engine, where="--scorer")


def _score_chunk(records: list[Record], spec: dict[str, dict[str, Any]]) -> list[tuple[dict, dict]]:
    """On a Dask worker: the CPU scorers of ``spec`` over one chunk; scores and scorer columns back."""
    from synthflow.recipe import EngineConfig
    from synthflow.registry import validate_model
    from synthflow.scoring import ScoreContext, ScoreStage, build_scorers

    ctx = ScoreContext(generator_engine=validate_model(EngineConfig, {}, "--engine"), where="--scorer")
    stage = ScoreStage(build_scorers(spec, ctx))
    try:
        stage(records)
    finally:
        stage.close()
    return [(r.scores, {c: r.fields.get(c) for c in stage.columns}) for r in records]


def score_on_dask(address: str, records: list[Record], stage: Any, spec: dict[str, dict[str, Any]]) -> None:
    """``--dask``: chunks of rows to the cluster's workers, each scoring with its own copy of the
    scorers; the scores land on the same records, in order. Only CPU scorers: an engine-backed one
    (ifd, judge) batches on its engine instead."""
    from synthflow.daskrun import map_chunks, split, workers_of

    engine_backed = [s.name for s in stage.scorers if s.role]
    if engine_backed:
        raise UserError(
            f"--dask: scorer {engine_backed[0]} runs on an engine; use --dask with CPU scorers only"
        )
    results = map_chunks(address, _score_chunk, split(records, 4 * workers_of(address)), spec=spec)
    flat = [x for chunk in results for x in chunk]
    for r, (scores, fields) in zip(records, flat, strict=True):
        r.scores.update(scores)
        r.fields.update(fields)


def score_records(records: list[Record], stage: Any, batch_size: int, progress: bool) -> None:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="score", unit="row", dynamic_ncols=True)
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        stage(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def with_scores(table: pa.Table, records: list[Record], stage: Any) -> pa.Table:
    """The input table with every score (and scorer) column set; same-named columns are replaced."""
    cols: list[tuple[str, pa.DataType, list[Any]]] = [
        (f"score_{o}", pa.float64(), [r.scores.get(o) for r in records]) for o in stage.outputs
    ]
    cols += [(c, t, [r.fields.get(c) for r in records]) for c, t in stage.columns.items()]
    if "id" not in table.column_names:
        table = table.append_column("id", pa.array([r.id for r in records], pa.string()))
    for name, typ, values in cols:
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(pa.field(name, typ), pa.array(values, typ))
    return table


def stats_lines(records: list[Record], outputs: list[str]) -> list[str]:
    lines = []
    for o in outputs:
        vals = [v for r in records if (v := r.scores.get(o)) is not None and v == v]
        if vals:
            lines.append(
                f"  score_{o:16s} min {min(vals):.4g}  median {statistics.median(vals):.4g}  "
                f"max {max(vals):.4g}  ({len(records) - len(vals)} null)"
            )
        else:
            lines.append(f"  score_{o:16s} all null")
    return lines


def cmd_score(a: Any) -> int:
    from synthflow.engines.pool import EnginePool
    from synthflow.scoring import ScoreStage, build_scorers

    spec = _scoring_spec(a)
    ctx = _context(a)
    pool = EnginePool()
    ctx.engines = pool
    in_place = a.out is None
    if in_place and not (len(a.inputs) == 1 and is_run_dir(Path(a.inputs[0]))):
        raise UserError("--out DIR is required (only a single finished run folder is re-scored in place)")
    try:
        stage = ScoreStage(build_scorers(spec, ctx))
        stage.preflight()
        progress = os.environ.get("SYNTHFLOW_PROGRESS", "1") != "0"
        t0 = time.perf_counter()
        batch = a.batch_size or (256 if any(s.role for s in stage.scorers) else 8192)
        if in_place:
            n, records = _rescore_run(Path(a.inputs[0]), stage, a, batch, progress)
        else:
            table = read_inputs(a.inputs, (a.instruction_field, a.response_field))
            records = to_records(table, a.instruction_field, a.response_field)
            if a.dask:
                score_on_dask(a.dask, records, stage, spec)
            else:
                score_records(records, stage, batch, progress)
            out = Path(a.out) / "scored.parquet"
            with atomic_path(out) as tmp:
                pq.write_table(with_scores(table, records, stage), tmp, compression="zstd")
            n = len(records)
        dt = time.perf_counter() - t0
        stage.close()
    finally:
        pool.close()
    print(f"scored {n} rows with {', '.join(spec)} in {dt:.1f} s ({n / dt:.0f} rows/s)" if dt else "")
    print("\n".join(stats_lines(records, stage.outputs)))
    for role, u in pool.usage().items():
        print(
            f"  {role}: {u['engine']} {u['model']}: {u['misses']} computed, {u['hits']} cached; "
            f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; {u['engine_seconds']} s"
        )
    print(f"wrote {a.inputs[0] if in_place else Path(a.out) / 'scored.parquet'}")
    return 0


def _rescore_run(run_dir: Path, stage: Any, a: Any, batch: int, progress: bool) -> tuple[int, list[Record]]:
    """A new version of the run's Parquet files with the new score columns, each file replaced whole;
    ``summary.json`` lists the re-scoring. Re-thresholding stays a query over these columns."""
    files = sorted((run_dir / "data").glob("*.parquet")) + sorted((run_dir / "rejects").glob("*.parquet"))
    new: list[tuple[Path, pa.Table]] = []
    all_records: list[Record] = []
    for f in files:
        table = read_inputs([str(f)], (a.instruction_field, a.response_field))
        recs = to_records(table, a.instruction_field, a.response_field)
        if a.dask:
            score_on_dask(a.dask, recs, stage, _scoring_spec(a))
        else:
            score_records(recs, stage, batch, progress)
        new.append((f, with_scores(table, recs, stage)))
        all_records += recs
    for f, table in new:  # nothing is replaced until every file has scored
        with atomic_path(f) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("rescored", []).append(
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "scorers": list(a.scorer),
            "columns": stage.outputs,
        }
    )
    with atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    return len(all_records), all_records


# ---- train-scorer --------------------------------------------------------------------------------
def cmd_train_scorer(a: Any) -> int:
    from filters import clf

    table = read_inputs(a.inputs, (a.instruction_field, a.response_field), with_rejects=True)
    if a.label_field not in table.column_names:
        raise UserError(
            f"--label-field {a.label_field!r}: no such field (fields: {', '.join(table.column_names[:12])})"
        )
    all_labels = table.column(a.label_field).to_pylist()
    keep = [i for i, v in enumerate(all_labels) if v is not None]
    if not keep:
        raise UserError(f"--label-field {a.label_field!r}: every row's label is null")
    recs = to_records(table.take(keep), a.instruction_field, a.response_field)
    pairs = [(r.messages[0]["content"], r.messages[1]["content"]) for r in recs]
    labels = [all_labels[i] for i in keep]
    skipped = len(all_labels) - len(keep)
    t0 = time.perf_counter()
    model = clf.train(
        pairs, labels, threshold=a.threshold, folds=a.folds, where=f"--label-field {a.label_field}"
    )
    meta = model.meta
    meta.update(
        label_field=a.label_field,
        instruction_field=a.instruction_field,
        response_field=a.response_field,
    )
    meta["training"]["inputs"] = [str(p) for p in a.inputs]
    meta["training"]["skipped_null_labels"] = skipped
    out = clf.save(Path(a.out), model)
    m = meta["metrics"]
    extra = f", {m['positives']} positive" if "positives" in m else ""
    print(
        f"trained a {meta['task']} scorer on {m['rows']} rows{extra} "
        f"({skipped} with a null label skipped) in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"cross-validated {m['metric'].upper() if m['metric'] == 'auc' else m['metric']}: {m['value']} ({m['folds']} folds)"
    )
    print(f"wrote {out}  (use it: --scorer sklearn:{out})")
    return 0


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "score",
        help="score existing rows (JSONL, Parquet or a run folder) without generating",
        description="Add score_* columns to existing rows. Fields default to `messages` (first user turn, "
        "last assistant turn). With --out DIR the rows and every input column go to DIR/scored.parquet; "
        "without it a single finished run folder is re-scored in place (a new version of its Parquet files).",
        epilog="Examples:\n"
        "  synthflow score pairs.jsonl --scorer ifd --instruction-field instruction --response-field response --out scored/\n"
        "  synthflow score out/self_instruct/RUN --scorer judge --param judge.sample=0.2\n"
        "  synthflow score rows.parquet --scorer sklearn:models/quality --out scored/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("inputs", nargs="+", help="JSONL (.gz) or Parquet files, or a finished run folder")
    s.add_argument(
        "--scorer", action="append", required=True, help="heuristics, ifd, judge, sklearn:DIR (repeatable)"
    )
    s.add_argument("--out", help="output folder (scored.parquet); omit to re-score a run folder in place")
    s.add_argument("--instruction-field", default="messages", help="default: messages (first user turn)")
    s.add_argument("--response-field", default="messages", help="default: messages (last assistant turn)")
    s.add_argument(
        "--param", action="append", help="scorer option, e.g. judge.sample=0.2 or judge.rubric=math"
    )
    s.add_argument("--engine", help="engine of the judge (default vllm: the embedded model)")
    s.add_argument("--model", help="model of the judge engine")
    s.add_argument("--base-url", help="OpenAI-compatible base URL for --engine openai")
    s.add_argument(
        "--batch-size",
        type=positive_int,
        help="rows per scorer call (default: 256 with a model-backed scorer, else 8192)",
    )
    s.add_argument(
        "--dask",
        metavar="ADDRESS|local:N",
        help="score on a Dask cluster (scheduler address, or local:N worker processes); CPU scorers "
        "only (heuristics, sklearn:DIR); the same columns as without it",
    )
    s.set_defaults(fn=cmd_score)

    t = sub.add_parser(
        "train-scorer",
        help="fit a cheap scikit-learn scorer on labelled rows (for --scorer sklearn:DIR)",
        description="Fit a scikit-learn linear model on text features of labelled rows and save it with "
        "its feature spec, training-data fingerprint and cross-validated metrics. A label of booleans or "
        "0/1 trains a classifier (AUC); other numbers a regressor (Spearman), or a classifier with --threshold. "
        "The model is saved as JSON and float arrays (no pickle).",
        epilog="Example:\n  synthflow train-scorer judged.parquet --label-field score_judge --threshold 7 --out models/quality",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("inputs", nargs="+", help="JSONL (.gz) or Parquet files, or a finished run folder")
    t.add_argument("--label-field", required=True, help="the label: bool/0-1, or a number")
    t.add_argument("--threshold", type=float, help="binarize a numeric label: label >= T is positive")
    t.add_argument("--instruction-field", default="messages")
    t.add_argument("--response-field", default="messages")
    t.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (default 5)")
    t.add_argument("--out", required=True, help="model folder to write")
    t.set_defaults(fn=cmd_train_scorer)
