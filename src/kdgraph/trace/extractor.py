"""The two entry points: ``trace_model`` (names and shapes) and ``FeatureExtractor``.

``trace_model`` tries torch.fx first and falls back to forward hooks, with a
``TraceFallbackWarning`` saying why. ``FeatureExtractor`` follows the method the
``LayerMap`` was traced with: on the fx path the taps are outputs of a rewritten
graph (no hooks, compile-friendly, unused tail removed); on the hooks path they
are captured by hooks during a normal forward.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from kdgraph.trace.fx import build_feature_graph, fx_layer_map
from kdgraph.trace.hooks import HookTaps, hooks_layer_map
from kdgraph.trace.layer_map import PROBE_BATCH, LayerMap

__all__ = ["TraceFallbackWarning", "trace_model", "FeatureExtractor"]


class TraceFallbackWarning(UserWarning):
    """torch.fx could not trace a model; kdgraph used forward hooks instead."""


def trace_model(model: nn.Module, input_shape: tuple[int, ...], model_name: str = "model") -> LayerMap:
    """The ``LayerMap`` of ``model`` for inputs of ``input_shape`` (no batch dim).

    torch.fx first (eval-mode graph, timm's leaf modules, flag arguments fixed at
    their defaults when the plain trace fails); on any tracing or graph-probing
    failure, forward hooks, with a ``TraceFallbackWarning``. The probe is one
    forward of a batch of 2 under ``torch.no_grad()`` in eval mode, on meta
    tensors unless they cannot run the model (``kdgraph.trace.probe``); every
    module's train/eval flag is restored and nothing is updated (eval-mode
    BatchNorm keeps its statistics).
    """
    input_shape = tuple(int(s) for s in input_shape)
    try:
        return fx_layer_map(model, input_shape, model_name)
    except Exception as fx_err:  # noqa: BLE001 - any fx failure means "use hooks"
        reason = _summary(fx_err)
    try:
        layer_map = hooks_layer_map(model, input_shape, model_name)
    except Exception as err:
        raise ValueError(
            f"{model_name}: a probe forward with input shape {(PROBE_BATCH, *input_shape)} failed "
            f"({_summary(err)}); check the input shape the model expects "
            f"(torch.fx tracing had failed first: {reason})"
        ) from err
    warnings.warn(
        f"{model_name}: torch.fx could not trace the model ({reason}); falling back to forward "
        f"hooks, so only module names can be tapped and features are captured by hooks",
        TraceFallbackWarning,
        stacklevel=2,
    )
    return layer_map


def _summary(err: Exception) -> str:
    """``Type: first line of the message``: fx appends the failing node and a tlparse hint on further lines."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip() if lines else ''}".strip().rstrip(":")


class FeatureExtractor(nn.Module):
    """``forward(x) -> {tap: feature, ..., "output": model output}``.

    Built from a ``LayerMap`` of the same model (names are checked against it,
    with suggestions). Uses the model's own parameters and buffers (no copies),
    so an optimizer over ``model.parameters()`` trains through the extractor.

    - fx (``layer_map.method == "fx"``): ``self.graph_module`` is the model's fx
      graph (train and eval variants, switched by ``.train()``/``.eval()``,
      traced with the map's ``fixed_args``) whose outputs are the taps; with
      ``keep_output=False`` every node after the last tap is removed, so e.g. a
      classifier head is never run.
    - hooks: ``self.model`` is the wrapped model; hooks are attached for the
      duration of each forward; only module names are valid taps.
    """

    def __init__(self, model: nn.Module, taps: list[str], layer_map: LayerMap, keep_output: bool = True):
        super().__init__()
        taps = list(dict.fromkeys(taps))
        if keep_output and "output" in taps:
            raise ValueError("'output' is reserved for the model's output when keep_output=True")
        for tap in taps:
            layer_map[tap]  # raises UnknownLayerError listing the nearest names
        self.taps = taps
        self.keep_output = keep_output
        self.method = layer_map.method
        self.layer_map = layer_map
        self.training = model.training
        if self.method == "fx":
            self.graph_module = build_feature_graph(model, taps, keep_output, layer_map.model, layer_map.fixed_args)
        else:
            self.model = model
            self._hooks = HookTaps(model, taps)

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape (without the batch dim) of every value ``forward`` returns, from the layer map's probe."""
        shapes = {tap: self.layer_map[tap].shape for tap in self.taps}
        if self.keep_output and self.layer_map.output is not None:
            shapes["output"] = self.layer_map.output.shape
        return shapes

    def forward(self, x: Tensor) -> dict[str, Any]:
        if self.method == "fx":
            return self.graph_module(x)
        return self._hooks.run(self.model, x, self.keep_output)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, taps={self.taps}, keep_output={self.keep_output}"
