"""Rows of a user's file (JSONL, optionally gzipped, or Parquet): every problem is one line naming
the file and the row or column, never a traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from synthflow.errors import UserError


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
