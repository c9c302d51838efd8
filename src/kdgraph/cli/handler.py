"""The CLI's one error handler: a user error (any ``KdgraphError``) is one message on stderr and exit code 2.

Every command is wrapped with :func:`handle_errors`; ``--debug`` shows the traceback instead. An interruption
(``Interrupted``, a Ctrl-C) exits with 130.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from kdgraph.errors import KdgraphError

__all__ = ["handle_errors"]


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors as one clear message and exit 2; ``--debug`` shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except KdgraphError as err:
            from kdgraph.session.signals import Interrupted

            if isinstance(err, Interrupted):
                click.echo(str(err), err=True)
                ctx.exit(130)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)

    return wrapper
