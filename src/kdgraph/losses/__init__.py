"""Distillation losses: pure functions of tensors returning a scalar, each registered as one ``LossRecord``.

``get_loss(name)`` gives a record (function, kind, what it needs from the adapters, parameters); ``losses()`` lists
them. Every module of this package is imported here, so a module that decorates a function with
``@register_loss(...)`` adds a loss without touching any other file. See ``docs/losses.md`` for the formulas.
"""

import importlib
import pkgutil

from kdgraph.losses.registry import (
    BUILD_INPUTS,
    MANY,
    PAIR_KINDS,
    STEP_INPUTS,
    REQUIRED,
    LossKind,
    LossRecord,
    Needs,
    UnknownLossError,
    get_loss,
    losses,
    register_loss,
)
from kdgraph.losses.feature import LOGSUM_FLOOR, cosine, feature_distance, l1, logsum, logsum_corr, mse
from kdgraph.losses.logits import cross_entropy, kl_div, soft_cross_entropy
from kdgraph.losses.relational import cosine_kernel, distance_kernel, pkt_combined, pkt_cosine

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # registers the losses of every module (a new file is enough)

__all__ = [
    "BUILD_INPUTS",
    "LOGSUM_FLOOR",
    "MANY",
    "STEP_INPUTS",
    "LossKind",
    "LossRecord",
    "Needs",
    "PAIR_KINDS",
    "REQUIRED",
    "UnknownLossError",
    "cosine",
    "cosine_kernel",
    "cross_entropy",
    "distance_kernel",
    "feature_distance",
    "get_loss",
    "kl_div",
    "l1",
    "logsum",
    "logsum_corr",
    "losses",
    "mse",
    "pkt_combined",
    "pkt_cosine",
    "register_loss",
    "soft_cross_entropy",
]
