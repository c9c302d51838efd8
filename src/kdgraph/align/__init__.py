"""Adapters that make a student feature comparable to a teacher feature.

:func:`align_pair` is the entry point: from two probed shapes, the pair's options and what its loss needs, it runs
the four steps of :mod:`kdgraph.align.steps` (pool, layout, project, normalise) and returns the
:class:`PairAdapters`: the student-side adapter (trainable: projector) and the teacher-side transform (no
parameters: pool, layout, channel selection, normaliser). See ``docs/adapters.md`` for the rules.
"""

from kdgraph.align.layout import FeatureShape
from kdgraph.align.normalizers import build_normalizer, parse_normalizer
from kdgraph.align.pair import AlignmentError, PairAdapters, align_pair
from kdgraph.align.projectors import build_projector, parse_projector
from kdgraph.align.prune import ChannelSelect, find_producing_conv, l1_channel_mask

__all__ = [
    "AlignmentError",
    "ChannelSelect",
    "FeatureShape",
    "PairAdapters",
    "align_pair",
    "build_normalizer",
    "build_projector",
    "find_producing_conv",
    "l1_channel_mask",
    "parse_normalizer",
    "parse_projector",
]
