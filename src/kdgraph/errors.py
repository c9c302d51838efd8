"""User-facing errors: every one names where the problem is, what was wrong and what to try."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["KdgraphError", "SpecError", "ModelError", "WeightsError", "RunDirError", "with_key", "located", "suggest",
           "did_you_mean", "plural"]


def plural(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``: a count with its noun, as a message reads it."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def suggest(name: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``choices`` close to ``name``, closest first: the one "did you mean" of kdgraph's messages."""
    return difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``; did you mean 'x'?`` for the closest of ``choices``, or nothing when none is close."""
    near = suggest(name, choices, cutoff=cutoff)
    return f"; did you mean {near[0]!r}?" if near else ""


def located(key: str, line: int | str | None) -> str:
    """``train.epochs (line 9)``, or ``train.epochs (--set train.epochs=x)`` when the value came from a ``--set``
    override (then ``line`` is that override, as ``LineIndex`` gives it), or the bare key when neither is known."""
    if not line:
        return key
    return f"{key} ({line})" if isinstance(line, str) else f"{key} (line {line})"


class KdgraphError(Exception):
    """Base class of every error that is the user's to fix; the CLI prints them and exits with code 2.

    ``key`` is the dotted spec path (``distill.pairs[0].teacher``) and ``line`` the YAML line, when known (or the
    ``--set KEY=VALUE`` text when the value came from an override). A subclass that callers also catch as a builtin
    keeps that builtin as a second base (``DataError(KdgraphError, ValueError)``); ``str()`` is always the plain
    message, also for a ``KeyError`` second base (which would quote it).
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.line = line

    def __str__(self) -> str:
        return f"{located(self.key, self.line)}: {self.message}" if self.key else self.message


class SpecError(KdgraphError):
    """The spec document is malformed or names something that does not exist."""


class ModelError(KdgraphError):
    """A model reference cannot be resolved or built."""


class WeightsError(KdgraphError):
    """A weights file is missing, corrupted or belongs to another architecture."""


class RunDirError(KdgraphError):
    """The run directory exists and would be overwritten."""


def with_key(err: Exception, key: str, line: int | str | None = None) -> KdgraphError:
    """Wrap any user-facing error with the spec key (and YAML line) it came from."""
    if isinstance(err, KdgraphError):
        if err.key is None:
            err.key, err.line = key, line
        return err
    return SpecError(str(err), key=key, line=line)
