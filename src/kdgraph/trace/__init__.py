"""Tracing: layer names and shapes (``LayerMap``) and feature extractors.

``trace_model`` lists what a spec may tap; ``FeatureExtractor`` returns those taps.
torch.fx first (taps become graph outputs), forward hooks as the fallback.
"""

from kdgraph.trace.extractor import FeatureExtractor, TraceFallbackWarning, trace_model
from kdgraph.trace.layer_map import LayerInfo, LayerMap, UnknownLayerError, split_name

__all__ = [
    "FeatureExtractor",
    "LayerInfo",
    "LayerMap",
    "TraceFallbackWarning",
    "UnknownLayerError",
    "split_name",
    "trace_model",
]
