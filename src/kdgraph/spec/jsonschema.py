"""The spec as a JSON Schema, for editors (yaml-language-server) and external validators.

Generated from ``Spec.model_json_schema()`` so that it can never disagree with the pydantic models; the copy
shipped at the repository root (``kdgraph.schema.json``) is checked against a fresh one by the tests. Regenerate
it with ``kdgraph schema --out kdgraph.schema.json`` after changing ``src/kdgraph/spec/schema.py``.

One correction is applied on top of pydantic's output: a field with a ``mode="before"`` validator that turns a
plain string into a mapping (``loss: mse`` → ``{name: mse}``, ``output: runs/x`` → ``{dir: runs/x}``) also accepts
that string in the schema. pydantic cannot see through a before-validator, so without this every shipped spec
using the short form would be flagged by an editor although kdgraph accepts it.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from kdgraph.spec.schema import Spec

__all__ = ["SCHEMA_DIALECT", "SCHEMA_FILE", "spec_json_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""pydantic 2 writes draft 2020-12 (``prefixItems``, ``$defs``)."""

SCHEMA_FILE = "kdgraph.schema.json"
"""Name of the exported schema at the repository root; specs point at it with a ``yaml-language-server`` line."""


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``root`` through field annotations, by class name (= ``$defs`` key)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in found:
                found[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _shorthands(model: type[BaseModel]) -> dict[str, list[dict[str, Any]]]:
    """Field name → extra JSON types its before-validators turn into a mapping (``string``, ``null``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if decorator.info.mode != "before":
            continue
        for field in decorator.info.fields:
            extra = []
            for probe, json_type in (("x", "string"), (None, "null")):
                try:
                    normalised = decorator.func(probe)
                except Exception:  # noqa: BLE001 - a validator that rejects the probe has no shorthand for it
                    continue
                if isinstance(normalised, (Mapping, BaseModel)):
                    extra.append({"type": json_type})
            if extra:
                out[field] = extra
    return out


def _allow(prop: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    """``prop`` widened by ``extra`` alternatives, keeping its description/default at the top."""
    meta = {k: prop[k] for k in ("title", "description", "default") if k in prop}
    body = {k: v for k, v in prop.items() if k not in meta}
    options = list(body["anyOf"]) if set(body) == {"anyOf"} else [body]
    for alt in extra:
        if alt not in options:
            options.append(alt)
    return {"anyOf": options, **meta}


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file: pydantic's schema of ``Spec`` with the short forms, ``$schema`` and a title."""
    schema = copy.deepcopy(Spec.model_json_schema())
    defs = schema.get("$defs", {})
    for name, model in _models(Spec).items():
        target = schema if model is Spec else defs.get(name)
        if target is None:
            continue
        for field, extra in _shorthands(model).items():
            props = target.get("properties", {})
            if field in props:
                props[field] = _allow(props[field], extra)
    head = {"$schema": SCHEMA_DIALECT, "title": "kdgraph spec"}
    return {**head, **{k: v for k, v in schema.items() if k not in head}}
