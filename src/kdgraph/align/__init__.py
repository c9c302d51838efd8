"""Adapters that make a student feature comparable to a teacher feature.

:func:`plan_pair` is the entry point: from two probed shapes and the pair's
options it builds the student-side adapter (trainable: projector) and the
teacher-side transform (no parameters: pool, layout, channel selection,
normaliser). See ``docs/adapters.md`` for the rules.
"""

from kdgraph.align.layout import (
    ClsToken,
    DropClsToken,
    GlobalAvgPool,
    MapToTokens,
    Resize,
    TokensToMap,
    token_grid,
)
from kdgraph.align.normalizers import FeatureLayerNorm, L2Norm, TokenBatchNorm, build_normalizer
from kdgraph.align.plan import AlignmentError, FeatureShape, PairPlan, plan_pair
from kdgraph.align.projectors import build_mlp, build_projector
from kdgraph.align.prune import ChannelSelect, find_producing_conv, l1_channel_mask

__all__ = [
    "AlignmentError",
    "FeatureShape",
    "PairPlan",
    "plan_pair",
    "build_projector",
    "build_mlp",
    "build_normalizer",
    "TokenBatchNorm",
    "L2Norm",
    "FeatureLayerNorm",
    "token_grid",
    "GlobalAvgPool",
    "ClsToken",
    "DropClsToken",
    "TokensToMap",
    "MapToTokens",
    "Resize",
    "ChannelSelect",
    "l1_channel_mask",
    "find_producing_conv",
]
