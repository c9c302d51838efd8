"""The "name or ``{name: ..., option: value}``" form every pluggable choice of a spec takes, parsed in one place.

``projector: linear`` and ``projector: {name: linear, bias: false}`` are the same choice; so are ``mix: cutmix`` and
``mix: {name: cutmix}``, ``loss: mse`` and ``loss: {name: mse}``. A table of :class:`Choice` per kind of thing
(``PROJECTORS``, ``NORMALIZERS``) says which names exist and which options each takes; :func:`parse_named` checks a
value against it. The spec calls it when it loads (so a typo is reported with its YAML line before any model is
built) and the planner calls it again on the same value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from kdgraph.errors import did_you_mean

__all__ = ["Choice", "as_named", "split_named", "parse_named"]


@dataclass(frozen=True)
class Choice:
    """One name of a table: its options, each with a function that checks (and may normalise) its value and raises
    ``ValueError`` naming the problem, and ``check`` for rules across options (one flag per hidden layer)."""

    options: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    check: Optional[Callable[[dict[str, Any]], None]] = None


def as_named(value: Any) -> Any:
    """``"mse"`` -> ``{"name": "mse"}``; anything else unchanged (a spec before-validator: the short form)."""
    return {"name": value} if isinstance(value, str) else value


def split_named(value: Any, what: str, default: str, names: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a name, a mapping with ``name``, or an object with ``name`` and ``params``;
    None is ``default``."""
    if value is None:
        return default, {}
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ValueError(f"{what} {dict(value)!r} has no 'name'; valid names: {', '.join(names)}")
        options = dict(value)
        return options.pop("name"), options
    if isinstance(getattr(value, "name", None), str) and isinstance(getattr(value, "params", None), Mapping):
        return value.name, dict(value.params)
    raise ValueError(f"{what} must be a name or a mapping with 'name', got {value!r}")


def parse_named(value: Any, what: str, table: Mapping[str, Choice], default: str) -> tuple[str, dict[str, Any]]:
    """Check ``value`` against ``table``: a known name (else the valid names and the closest), only the options that
    name takes, each option's value; returns ``(name, options)`` with the options as their checks normalise them."""
    name, options = split_named(value, what, default, table)
    if not isinstance(name, str) or name not in table:
        near = did_you_mean(name, table) if isinstance(name, str) else ""
        raise ValueError(f"{what} {name!r} is not one of {', '.join(table)}{near}")
    choice = table[name]
    extra = set(options) - set(choice.options)
    if extra:
        takes = f"; it takes: {', '.join(sorted(choice.options))}" if choice.options else ""
        raise ValueError(f"{what} {name!r} does not take {', '.join(sorted(extra))}{takes}")
    options = {key: choice.options[key](val) for key, val in options.items()}
    if choice.check is not None:
        choice.check(options)
    return name, options
