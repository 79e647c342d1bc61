"""One error type for bad input that a user can fix.

Every problem with a user's file, dataset, checkpoint or hyper-parameter raises
``InputError`` (a ``ValueError``) with a one-line message; for data files the
message starts with ``path:line:`` so an editor can jump there. The command line
prints the message and exits with status 2 instead of showing a traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input the user can fix: the message says what and where."""


def at(path, line: int | None, message: str) -> InputError:
    """Build an InputError located at ``path:line`` (line is 1-based, or None)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return InputError(f"{where}: {message}")
