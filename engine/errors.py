"""Errors a user can cause. The CLI prints them as one line and exits with ``exit_code``.

Anything that is not a :class:`KQError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class KQError(Exception):
    """A user-facing error: bad input, bad config, refused action. No traceback is shown."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(KQError):
    """A config file is missing, malformed, has an unknown key or an out-of-range value."""


class InputError(KQError):
    """A data file or argument is malformed. The message names the file, the line and the rule."""


class IntegrityError(KQError):
    """A blocking data-integrity problem (``kq data check`` exits 1)."""

    exit_code = 1


def one_line(s: str, limit: int = 2000) -> str:
    """``s`` as one printable line: control characters (newlines, terminal escapes) escaped, cut
    at ``limit`` characters. What the CLI prints for a :class:`KQError`."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(s))
    return out if len(out) <= limit else out[:limit] + "..."
