"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, file, engine, data). The CLI prints ``str(err)`` and exits 2."""

    exit_code = 2


class EngineUnavailable(UserError):
    """The configured engine cannot be reached or started."""
