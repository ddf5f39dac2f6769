"""The one error family: every error a user can act on derives from `BlspdataError`.

The CLI catches `BlspdataError` (and `OSError`, for files the user named) in one place and
prints its message as one line; anything else is a bug and keeps its traceback. Stage
errors (`IngestError`, `GenerateError`, ...) subclass it next to the code that raises them;
some also keep an older builtin base (`ValueError`, `RuntimeError`) so callers that catch
that still do.
"""

from __future__ import annotations


def cut(text: str, limit: int = 200) -> str:
    """`text` at most `limit` characters, saying how long it was: an error message never
    echoes a huge value (a 50 MB config value, a row's field) whole."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


class BlspdataError(Exception):
    """A problem with the user's input, config or environment, said in one clear line."""


class RowError(BlspdataError, ValueError):
    """A row that does not fit the record schema (wrong type, impossible value)."""
