"""Name -> loss-function tables used by the spec layer.

``loss: {name: logsum, alpha: 4}`` is resolved with :func:`get_loss` and its
extra keys are validated against :func:`loss_params`.
"""

from __future__ import annotations

import inspect
from typing import Callable, Literal

from torch import Tensor

from kdgraph.errors import KdgraphError, suggest

from kdgraph.losses.feature import cosine, l1, logsum, logsum_corr, mse
from kdgraph.losses.logits import kl_div, soft_cross_entropy
from kdgraph.losses.relational import pkt_combined, pkt_cosine

__all__ = ["FEATURE_LOSSES", "LOGIT_LOSSES", "UnknownLossError", "get_loss", "loss_params", "LossKind"]

LossFn = Callable[..., Tensor]
LossKind = Literal["feature", "logit"]

FEATURE_LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "l1": l1,
    "cosine": cosine,
    "logsum": logsum,
    "logsum_corr": logsum_corr,
    "pkt": pkt_cosine,
    "pkt_combined": pkt_combined,
}

LOGIT_LOSSES: dict[str, LossFn] = {
    "kl": kl_div,
    "ce_soft": soft_cross_entropy,
}

_TABLES: dict[str, dict[str, LossFn]] = {"feature": FEATURE_LOSSES, "logit": LOGIT_LOSSES}


class UnknownLossError(KdgraphError, KeyError):
    """Unknown loss name (also a ``KeyError``); the message lists valid names and the closest match."""

    def __init__(self, name: str, choices: list[str] | tuple[str, ...], kind: str = "") -> None:
        self.name = name
        self.choices = sorted(choices)
        close = suggest(name, self.choices)
        self.suggestion: str | None = close[0] if close else None
        what = f"{kind} loss" if kind else "loss"
        msg = f"unknown {what} {name!r}; valid names: {', '.join(self.choices)}"
        if self.suggestion is not None:
            msg += f"; did you mean {self.suggestion!r}?"
        super().__init__(msg)


def _table(kind: str) -> dict[str, LossFn]:
    if kind not in _TABLES:
        raise ValueError(f"kind must be one of {sorted(_TABLES)}, got {kind!r}")
    return _TABLES[kind]


def get_loss(name: str, kind: LossKind = "feature") -> LossFn:
    """Return the loss function registered as ``name`` in the ``kind`` table."""
    table = _table(kind)
    if name not in table:
        raise UnknownLossError(name, list(table), kind)
    return table[name]


def loss_params(name: str, kind: LossKind | None = None) -> dict[str, inspect.Parameter]:
    """Tunable keyword parameters of loss ``name`` (all after the two tensors).

    With ``kind=None`` both tables are searched (their names are disjoint).
    """
    if kind is None:
        merged = {**FEATURE_LOSSES, **LOGIT_LOSSES}
        if name not in merged:
            raise UnknownLossError(name, list(merged))
        fn = merged[name]
    else:
        fn = get_loss(name, kind)
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p for p in params}
