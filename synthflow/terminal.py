"""Where a run talks to the person at the terminal.

``synthflow run`` runs the flow in a child process whose stdout and stderr go to a log file, so
everything the run's processes print (vLLM's and Prefect's logs, progress bars of the engine, Triton
warnings) lands there. The child keeps the terminal for synthflow's own progress bar, summary and
one-line errors: ``SYNTHFLOW_TERMINAL_FDS`` names the two inherited descriptors (the terminal's
stdout and stderr) and ``SYNTHFLOW_LOG`` the log file. ``claim`` takes both out of the environment,
so processes the run starts do not inherit them.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_streams: dict[str, TextIO] = {}
_log: str | None = None


def claim() -> None:
    """In the supervised run's process: open the terminal's streams (once)."""
    global _log
    fds = os.environ.pop("SYNTHFLOW_TERMINAL_FDS", "")
    _log = os.environ.pop("SYNTHFLOW_LOG", None) or _log
    if fds and not _streams:
        o, e = (int(x) for x in fds.split(","))
        _streams["out"] = os.fdopen(o, "w", buffering=1)
        _streams["err"] = os.fdopen(e, "w", buffering=1)


def out() -> TextIO:
    return _streams.get("out", sys.stdout)


def err() -> TextIO:
    return _streams.get("err", sys.stderr)


def log_file() -> str | None:
    """The run's log file (None when the run's output goes to the terminal, e.g. with -v)."""
    return _log


def error_line(text: str) -> str:
    """A one-line error, naming the log file when the details went there."""
    return f"{text} (log: {_log})" if _log else text
