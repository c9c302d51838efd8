"""The base of every spec section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Section"]


class Section(BaseModel):
    """A YAML section: unknown keys are errors, assignments are validated, and no value is infinite or NaN."""

    # allow_inf_nan=False: `.inf`/`.nan` pass `gt=0` checks (inf) or slip through unchecked fields; never meaningful
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
