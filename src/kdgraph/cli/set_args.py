"""``--set`` as the shell delivers it: a ``--set`` whose ``KEY=VALUE`` arrived in several words is explained before
click reports the words it cannot place ("Got unexpected extra argument").

Two mistakes split a ``--set``: a space instead of ``=`` (``--set train.epochs 1``), and an unquoted value with
spaces (``--set student.kwargs={widths: [8, 16, 16]}``, which the shell splits at each space). Both are read from the
raw arguments, so the message can say what was meant and show the quoting.
"""

from __future__ import annotations

import shlex
from typing import Optional

import click

__all__ = ["SetCommand", "set_mistake"]

_OPENERS, _CLOSERS = "[{(", "]})"


def _unbalanced(text: str) -> bool:
    """Whether ``text`` opens more brackets than it closes, or leaves a quote open: a YAML value cut short."""
    depth = sum(text.count(c) for c in _OPENERS) - sum(text.count(c) for c in _CLOSERS)
    return depth > 0 or text.count('"') % 2 == 1 or text.count("'") % 2 == 1


def _words_after(args: list[str], start: int) -> list[str]:
    """The plain words from ``start`` on, up to the next option."""
    words = []
    for word in args[start:]:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def set_mistake(args: list[str]) -> Optional[str]:
    """What the first split ``--set`` among ``args`` (a command's raw arguments) meant, or None when every
    ``--set`` is one ``KEY=VALUE`` word."""
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--set" and i + 1 < len(args):
            item, rest = args[i + 1], i + 2
        elif word.startswith("--set="):
            item, rest = word[len("--set="):], i + 1
        else:
            i += 1
            continue
        after = _words_after(args, rest)
        key, eq, value = item.partition("=")
        if after and not item.startswith("-") and (not eq or not value):
            if after[0].endswith((".yaml", ".yml")):  # the spec: the value itself is missing
                if eq:
                    i = rest
                    continue
                return f"--set {item} has no value: a --set is one word, KEY=VALUE (e.g. --set {key}=1)"
            value = after[0].lstrip("=") or (after[1] if len(after) > 1 else "")
            return (f"--set {' '.join([item, *after[:2 if after[0] == '=' else 1]])}: a --set is one word, KEY=VALUE, "
                    f"without spaces around '='; write --set {shlex.quote(f'{key}={value}')}")
        if eq and _unbalanced(value) and after:
            joined = item
            for count, extra in enumerate(after, start=2):
                joined += " " + extra
                if not _unbalanced(joined.split("=", 1)[1]):
                    break
            return (f"the shell split --set {joined} into {count} words at its spaces; quote the whole KEY=VALUE: "
                    f"--set {shlex.quote(joined)}")
        i = rest
    return None


class SetCommand(click.Command):
    """A click command with ``--set``: a split ``--set`` is a usage error that says what was meant."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        mistake = set_mistake(list(args))
        if mistake is not None:
            raise click.UsageError(mistake, ctx)
        return super().parse_args(ctx, args)
