"""The spec reference (docs/spec_reference.md), generated from the pydantic models (one table per section) and
from the loss records (one table of every registered loss)."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kdgraph.spec.schema import Spec

__all__ = ["spec_reference"]


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # PositiveInt and friends: the base type and its bounds
        bounds = [f"{sign} {getattr(m, key)}" for m in annotation.__metadata__ for key, sign in _BOUNDS.items()
                  if getattr(m, key, None) is not None]
        return _type_name(typing.get_args(annotation)[0]) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" if a is not None else "null" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " \\| null" \
            if type(None) in typing.get_args(annotation) else " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, dict):
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section `{annotation.__name__}`"
    return getattr(annotation, "__name__", str(annotation)).replace("Annotated", "")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return f"`{json.dumps(value)}`"


def _inner(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _inner(a)]


def spec_reference() -> str:
    """Markdown tables of every key of the spec, section by section, with type, default and description."""
    lines = ["# Spec reference", "", "Generated from `src/kdgraph/spec/schema.py` by `kdgraph schema --markdown`; "
             "do not edit by hand. The user guide is [spec.md](spec.md).", ""]
    queue: list[tuple[str, type[BaseModel]]] = [("", Spec)]
    while queue:
        prefix, model = queue.pop(0)
        title = prefix or "(top level)"
        lines += [f"## `{title}`", "", (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "", "",
                  "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
            for sub in _inner(field.annotation):
                queue.append((key + ("[]" if typing.get_origin(field.annotation) is list else ""), sub))
        lines.append("")
    return "\n".join(lines + loss_reference())


_NEEDS = {"same-shape": "equal shapes (projector: auto adds one)", "same-grid": "equal grid, any width",
          "same-width": "equal width, any grid (projector: auto adds one)",
          "vectors": "(D,) vectors, any width (pooled)", "any": "any shapes (only the batch)"}


def loss_reference() -> list[str]:
    """A table of every registered loss: the name a spec uses, its kind, what it needs from the adapters, the
    layouts it takes, its taps per model, its loss-side module, the run inputs it takes, its parameters with
    defaults, and the first paragraph of its docstring (the formula and the paper)."""
    from kdgraph.losses import REQUIRED, losses

    lines = ["## Losses", "", "Every loss registered with `kdgraph.losses.register_loss` (`distill.logits.loss` takes "
             "the logit losses, `distill.pairs[].loss` the others). Formulas, papers and what each method needs: "
             "[losses.md](losses.md).", "",
             "| name | kind | adapters | layouts | taps | module | run inputs | parameters | function | what it computes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in losses():
        params = ", ".join(f"`{k}`" if v is REQUIRED else f"`{k}={v!r}`" for k, v in r.params.items()) or "-"
        needs = "-" if r.kind.value == "logit" else _NEEDS[r.needs.value]
        layouts = ", ".join(sorted(r.layouts))
        module = getattr(r.module, "__annotations__", {}).get("return", "yes") if r.module is not None else "-"
        inputs = ", ".join(f"`{name}`" for name in r.inputs) or "-"
        summary = r.summary.replace("|", "\\|")
        lines.append(f"| `{r.name}` | {r.kind.value} | {needs} | {layouts} | {r.taps} | {module} | {inputs} | {params} "
                     f"| `{r.function}` | {summary} |")
    return lines + [""]
