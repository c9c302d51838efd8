"""The base of every spec section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from kdgraph.named import as_named

__all__ = ["Section", "short_form"]


def short_form(*fields: str) -> Any:
    """A before-validator letting each of ``fields`` be written as a bare name: ``loss: mse`` for ``{name: mse}``
    (the JSON Schema export sees it and accepts the string too)."""

    def named(cls: type, value: Any) -> Any:
        return as_named(value)

    return field_validator(*fields, mode="before")(named)


class Section(BaseModel):
    """A YAML section: unknown keys are errors, assignments are validated, and no value is infinite or NaN."""

    # allow_inf_nan=False: `.inf`/`.nan` pass `gt=0` checks (inf) or slip through unchecked fields; never meaningful
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
