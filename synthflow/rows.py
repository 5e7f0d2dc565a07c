"""Rows of a user's file (JSONL, optionally gzipped, or Parquet): every problem is one line naming
the file and the row or column, never a traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthflow.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL (optionally .gz) or Parquet file; each row is a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__})") from None
    return rows


def _kind(v: Any) -> str:
    return "number" if isinstance(v, int | float) and not isinstance(v, bool) else type(v).__name__


def rows_table(rows: list[dict[str, Any]], path: Path | str) -> pa.Table:
    """The rows as one Arrow table; a column whose values differ in type (a number in one row, a
    string or list in another) is one error naming the file, the column and the first two rows."""
    import pyarrow as pa

    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, not the first row's
    try:
        return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        first: dict[str, tuple[int, str]] = {}
        for i, r in enumerate(rows, 1):
            for k, v in r.items():
                if v is None:
                    continue
                if k not in first:
                    first[k] = (i, _kind(v))
                elif first[k][1] != _kind(v):
                    j, kind = first[k]
                    raise UserError(
                        f"{path}: column {k!r} mixes types ({kind} in row {j}, {_kind(v)} in row {i}); "
                        "give each column one type"
                    ) from None
        raise UserError(f"{path}: rows do not share column types ({str(e).splitlines()[0][:160]})") from None
