"""Distillation losses: pure functions of tensors returning a scalar.

See ``docs/losses.md`` for the formulas as implemented.
"""

from kdgraph.losses.feature import LOGSUM_FLOOR, cosine, feature_distance, l1, logsum, logsum_corr, mse
from kdgraph.losses.logits import cross_entropy, kl_div, soft_cross_entropy
from kdgraph.losses.relational import cosine_kernel, distance_kernel, pkt_combined, pkt_cosine
from kdgraph.losses.table import (
    FEATURE_LOSSES,
    LOGIT_LOSSES,
    LossKind,
    UnknownLossError,
    get_loss,
    loss_params,
)

__all__ = [
    "FEATURE_LOSSES",
    "LOGIT_LOSSES",
    "LOGSUM_FLOOR",
    "LossKind",
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
    "loss_params",
    "mse",
    "pkt_combined",
    "pkt_cosine",
    "soft_cross_entropy",
]
