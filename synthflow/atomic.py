"""Write-then-rename, so a reader never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block succeeds,
    removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # on disk before the rename: a crash leaves old or new, whole
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already after a successful rename


def check_writable(path: Path | str, folder: bool = True) -> None:
    """Before anything is written: ``path`` (a folder, or a file when ``folder`` is False) can be
    created or written. One line naming the path otherwise (a file where a folder is wanted, a
    folder under a file, no write permission, a read-only filesystem)."""
    import os

    from synthflow.errors import UserError

    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise UserError(f"{p}: output folder is a file")
        if not folder and p.is_dir():
            raise UserError(f"{p}: output file is a folder")
    up = p if (folder and p.is_dir()) else p.parent
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        raise UserError(f"{p}: cannot write under {up}, which is a file")
    if not os.access(up, os.W_OK | os.X_OK):
        raise UserError(f"{p}: not writable ({up} is read-only or not ours)")
