"""One error type for bad input that a user can fix.

Every problem with a user's file, dataset, checkpoint or hyper-parameter raises
``InputError`` (a ``ValueError``) with a one-line message; for data files the
message starts with ``path:line:`` so an editor can jump there. The command line
prints the message and exits with status 2 instead of showing a traceback.
A training that diverges stops with ``TrainingStopped``, also printed as one line.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input the user can fix: the message says what and where."""


class TrainingStopped(Exception):
    """Training diverged (a non-finite loss, gradient, weight or validation score) and stopped;
    the message names the checkpoint that is kept (train.py raises it)."""


def at(path, line: int | None, message: str) -> InputError:
    """Build an InputError located at ``path:line`` (line is 1-based, or None)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return InputError(f"{where}: {message}")


def int_at_least(minimum: int):
    """An argparse ``type`` for integer options that must be >= minimum.

    A bad value (``--seed -1``, ``--threads 0``) then ends with argparse's one-line
    ``error: argument --seed: must be an integer >= 0, got -1`` and exit status 2.
    """
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse
