"""Seed extraction. Each seed keeps a stable ``seed_id`` (its own id, or a hash of its content)."""

from __future__ import annotations

import glob as _glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthflow.errors import UserError
from synthflow.record import stable_id
from synthflow.registry import register

BUILTIN_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Seed:
    seed_id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.data.get("text") or self.data.get("instruction") or self.data.get("problem") or "")


def resolve_path(path: str) -> Path:
    """``builtin:<name>`` is a file shipped in ``synthflow/data``; anything else is a user path."""
    if path.startswith("builtin:"):
        return BUILTIN_DIR / path.removeprefix("builtin:")
    return Path(path).expanduser()


def _read_jsonl(p: Path) -> list[tuple[int, dict[str, Any]]]:
    if not p.is_file():
        raise UserError(f"{p}: seed file not found")
    rows = []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte {e.start}); seed files are JSON lines") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{p}:{lineno}: each line must be a JSON object")
        rows.append((lineno, obj))
    return rows


@register("seed_source", "jsonl")
def jsonl_seeds(path: str, field: str | None = None, limit: int | None = None, **_: Any) -> list[Seed]:
    """One seed per JSON line. ``id``/``seed_id`` is kept; otherwise the content hash is the id."""
    p = resolve_path(path)
    seeds = []
    for lineno, obj in _read_jsonl(p):
        if field is not None:
            if field not in obj:
                raise UserError(f"{p}:{lineno}: field {field!r} missing")
            obj = {**obj, "text": obj[field]}
        sid = str(obj.get("seed_id") or obj.get("id") or stable_id(obj))
        seeds.append(Seed(sid, "jsonl", obj))
    return seeds[:limit] if limit else seeds


GSM8K_OVERLAPS = BUILTIN_DIR / "benchmarks" / "gsm8k_train_overlaps.json"


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution (after ``#### ``), without thousands separators."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


@register("seed_source", "gsm8k")
def gsm8k_seeds(split: str | None = None, limit: int | None = None, **_: Any) -> list[Seed]:
    """GSM8K train problems with their known answers (MIT; shipped in ``synthflow/data/benchmarks``):
    ``problem``, ``answer`` (the number after ``####``) and ``solution`` (the worked steps). The
    questions that decontamination flags against the shipped test sets are left out."""
    import gzip

    split = split or "train"
    if split != "train":
        raise UserError(
            f"seeds: gsm8k split {split!r}: only the train split is a seed source (the test split is "
            "what decontamination checks against)"
        )
    path = BUILTIN_DIR / "benchmarks" / "gsm8k_train.jsonl.gz"
    skip = set(json.loads(GSM8K_OVERLAPS.read_text())["overlaps"])
    seeds = []
    for i, line in enumerate(gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()):
        if str(i) in skip:
            continue
        r = json.loads(line)
        steps = r["answer"].rsplit("####", 1)[0].strip()
        seeds.append(
            Seed(
                f"gsm8k-train-{i}",
                "gsm8k",
                {"problem": r["question"], "answer": gsm8k_answer(r["answer"]), "solution": steps},
            )
        )
    return seeds[:limit] if limit else seeds


@register("seed_source", "self_instruct")
def self_instruct_seeds(path: str, limit: int | None = None, **_: Any) -> list[Seed]:
    """The original Self-Instruct ``seed_tasks.jsonl`` format:
    ``{id, name, instruction, instances: [{input, output}], is_classification}``."""
    p = resolve_path(path)
    seeds = []
    for lineno, obj in _read_jsonl(p):
        if "instruction" not in obj:
            raise UserError(f"{p}:{lineno}: field 'instruction' missing (Self-Instruct seed format)")
        inst = obj.get("instances") or []
        seeds.append(
            Seed(
                str(obj.get("id") or stable_id(obj["instruction"])),
                "self_instruct",
                {
                    "instruction": obj["instruction"].strip(),
                    "name": obj.get("name", ""),
                    "instances": [{"input": i.get("input", ""), "output": i.get("output", "")} for i in inst],
                    "is_classification": bool(obj.get("is_classification", False)),
                },
            )
        )
    return seeds[:limit] if limit else seeds


def chunk_text(text: str, chunk_words: int) -> list[str]:
    """Split on blank lines, then pack paragraphs into chunks of at most ``chunk_words`` words."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for para in paras:
        words = para.split()
        while len(words) > chunk_words:  # one huge paragraph: hard split
            if cur:
                chunks.append("\n\n".join(cur))
                cur, n = [], 0
            chunks.append(" ".join(words[:chunk_words]))
            words = words[chunk_words:]
        if n + len(words) > chunk_words and cur:
            chunks.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(" ".join(words) if "\n" not in para else para)
        n += len(words)
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


DOC_SUFFIXES = {
    ".txt",
    ".md",
    ".markdown",
    ".rst",
    ".py",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".java",
    ".c",
    ".cpp",
    ".h",
}


@register("seed_source", "docs")
def doc_seeds(path: str, chunk_words: int = 200, limit: int | None = None, **_: Any) -> list[Seed]:
    """Raw text, Markdown or code files from a folder or a glob, chunked to ``chunk_words``."""
    p = resolve_path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DOC_SUFFIXES)
        base = p
    else:
        files = sorted(Path(f) for f in _glob.glob(str(p), recursive=True) if Path(f).is_file())
        base = Path(_glob.escape(str(p)).split("*")[0]).parent if "*" in str(p) else p.parent
        if not files:
            raise UserError(f"{path}: no such folder, and the glob matches no files")
    seeds = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
        kind = "code" if f.suffix.lower() not in {".txt", ".md", ".markdown", ".rst"} else "text"
        for i, chunk in enumerate(chunk_text(text, chunk_words)):
            seeds.append(
                Seed(
                    stable_id(rel, i, chunk),
                    "doc",
                    {"text": chunk, "source": rel, "chunk": i, "doc_kind": kind},
                )
            )
    return seeds[:limit] if limit else seeds


@register("seed_source", "table")
def table_seeds(path: str, field: str | None = None, limit: int | None = None, **_: Any) -> list[Seed]:
    """A text column of a Parquet file or a HF ``datasets`` dataset (``hf:<name>[:<split>]``)."""
    if not field:
        raise UserError(f"{path}: seed source 'table' needs field: <text column>")
    if path.startswith("hf:"):
        import datasets

        name, _, split = path.removeprefix("hf:").partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:
            raise UserError(f"{path}: cannot load dataset: {str(e).splitlines()[0]}") from None
        texts = ds[field] if field in ds.column_names else None
    else:
        import pyarrow.parquet as pq

        p = resolve_path(path)
        if not p.exists():
            raise UserError(f"{p}: seed file not found")
        if p.suffix == ".jsonl":
            return jsonl_seeds(path, field=field, limit=limit)
        tbl = pq.read_table(p)
        texts = tbl.column(field).to_pylist() if field in tbl.column_names else None
    if texts is None:
        raise UserError(f"{path}: no column {field!r}")
    seeds = [
        Seed(stable_id(path, i, t), "doc", {"text": str(t), "source": path, "chunk": i})
        for i, t in enumerate(texts)
        if t
    ]
    return seeds[:limit] if limit else seeds


def _check_fields(got: list[Seed], fields: tuple[str, ...], src: Any, i: int, reader: str) -> None:
    """Every seed of one source has a non-empty value in one of ``fields``, or one line naming the
    seed file, the row, what the generator reads and what the row has."""
    for k, s in enumerate(got, 1):
        if any(str(s.data.get(f) or "").strip() for f in fields):
            continue
        has = ", ".join(list(s.data)[:8]) or "no fields"
        raise UserError(
            f"{src.path or src.source}: row {k} has none of the fields the {reader} reads "
            f"({', '.join(fields)}); it has: {has}. Name the field that holds the text with "
            f"seeds[{i}].field"
        )


def extract_seeds(
    sources: list[Any], where: str = "recipe", fields: tuple[str, ...] = (), reader: str = "generator"
) -> list[Seed]:
    """Run every seed source of a recipe; an empty result is a user error, and so is a seed with
    none of ``fields`` (the ones the generator reads)."""
    from synthflow.registry import get

    seeds: list[Seed] = []
    for i, src in enumerate(sources):
        fn: Callable[..., list[Seed]] = get("seed_source", src.source, f"{where}: field seeds[{i}].source")
        got = fn(**src.model_dump())
        if not got:
            raise UserError(f"{src.path or src.source}: no seeds found (seeds[{i}] of {where})")
        if fields:  # () for a generator that skips seeds it cannot use
            _check_fields(got, fields, src, i, reader)
        seeds.extend(got)
    if not seeds:
        raise UserError(f"{where}: no seeds (the recipe lists no seed sources)")
    # stable order, unique ids
    seen: set[str] = set()
    uniq = []
    for s in seeds:
        if s.seed_id not in seen:
            seen.add(s.seed_id)
            uniq.append(s)
    return uniq
