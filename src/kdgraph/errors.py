"""User-facing errors: every one names where the problem is, what was wrong and what to try."""

from __future__ import annotations

__all__ = ["KdgraphError", "SpecError", "ModelError", "WeightsError", "RunDirError", "with_key"]


class KdgraphError(Exception):
    """Base class of errors that are the user's to fix; the CLI prints them and exits with code 2.

    ``key`` is the dotted spec path (``distill.pairs[0].teacher``) and ``line`` the YAML line, when known.
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.key:
            where = f"{self.key}"
            if self.line:
                where += f" (line {self.line})"
            where += ": "
        return f"{where}{self.message}"


class SpecError(KdgraphError):
    """The spec document is malformed or names something that does not exist."""


class ModelError(KdgraphError):
    """A model reference cannot be resolved or built."""


class WeightsError(KdgraphError):
    """A weights file is missing, corrupted or belongs to another architecture."""


class RunDirError(KdgraphError):
    """The run directory exists and would be overwritten."""


def with_key(err: Exception, key: str, line: int | None = None) -> KdgraphError:
    """Wrap any user-facing error with the spec key (and YAML line) it came from."""
    if isinstance(err, KdgraphError):
        if err.key is None:
            err.key, err.line = key, line
        return err
    return SpecError(str(err).strip("'\""), key=key, line=line)
