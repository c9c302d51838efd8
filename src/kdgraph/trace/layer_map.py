"""The layer vocabulary of a traced model: names, shapes, layouts.

A ``LayerMap`` is to kdgraph what timm's ``FeatureInfo`` is to timm: a small
metadata contract that every extraction strategy (fx graph, forward hooks)
honours. The names it lists are exactly the names a spec may tap; each name may
also carry one suffix:

- ``NAME:output`` is the same as ``NAME``;
- ``NAME:input`` is the first tensor input of that layer or submodule.

Shape rules (applied to one probe forward with a batch of ``PROBE_BATCH``):

- a tensor whose leading dim is the batch is described without it, and gets a
  layout from its rank: 3 -> ``"map"`` (C, H, W), 2 -> ``"tokens"`` (N, D),
  1 -> ``"vector"`` (D,), any other rank -> ``"other"``; a rank-3 feature that
  is channels-last (H, W, C) by the input's aspect ratio is ``"other"`` too;
- anything else (tuples, ``torch.Size``, ints, ``None``, tensors without a batch
  dim such as constants) is ``"other"`` with shape ``()``: such names stay
  tappable, but carry no shape promise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdgraph.errors import KdgraphError, suggest

__all__ = [
    "PROBE_BATCH",
    "LAYOUTS",
    "LayerInfo",
    "LayerMap",
    "UnknownLayerError",
    "split_name",
    "describe",
    "first_tensor",
    "probe_input",
    "preserved_modes",
]

PROBE_BATCH = 2
"""Batch size of the probe forward; a leading dim of this size is "the batch"."""

LAYOUTS = ("map", "tokens", "vector", "other")
SUFFIXES = ("input", "output")


@dataclass(frozen=True)
class LayerInfo:
    """One tappable layer: its name, what produced it and what it looks like."""

    name: str
    """Exactly the name a spec may use (``layer3``, ``blocks.5.mlp``, ``add_3``)."""
    kind: str
    """Module class name (``Conv2d``, ``BasicBlock``) or function/method name (``add``)."""
    shape: tuple[int, ...]
    """Output shape without the batch dim; ``()`` for layout ``"other"`` non-tensors."""
    channels: int | None
    """C for (C, H, W) maps, D for (N, D) tokens and (D,) vectors, else None."""
    stride: int | None
    """Input H // output H for maps (when the model input is (C, H, W)), else None."""
    layout: str
    """``"map"`` | ``"tokens"`` | ``"vector"`` | ``"other"``."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "channels": self.channels,
            "stride": self.stride,
            "layout": self.layout,
        }


class UnknownLayerError(KdgraphError, KeyError):
    """A layer name that the model's ``LayerMap`` does not list.

    Also a ``KeyError`` so that ``name in layer_map`` style code keeps working; ``str()`` is the plain message.
    """

    def __init__(self, message: str, name: str = "", suggestions: Sequence[str] = ()):
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)


def split_name(name: str) -> tuple[str, str]:
    """Split ``"layer3:input"`` into ``("layer3", "input")``; no suffix means ``"output"``.

    Raises ``ValueError`` for an unknown suffix.
    """
    base, sep, suffix = name.rpartition(":")
    if not sep:
        return name, "output"
    if suffix not in SUFFIXES:
        raise ValueError(
            f"layer name {name!r} has suffix {':' + suffix!r}; valid suffixes are "
            f"':input' and ':output' (or none, which means ':output')"
        )
    return base, suffix


def describe(value: Any, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int | None, int | None, str]:
    """``(shape, channels, stride, layout)`` of one probe value, by the module rules."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != PROBE_BATCH:
        return (), None, None, "other"
    shape = tuple(int(s) for s in value.shape[1:])
    if len(shape) == 3 and channels_last(shape, input_shape):
        return shape, None, None, "other"
    if len(shape) == 3:
        stride = None
        if len(input_shape) == 3 and shape[1] > 0:
            stride = input_shape[1] // shape[1]
        return shape, shape[0], stride, "map"
    if len(shape) == 2:
        return shape, shape[1], None, "tokens"
    if len(shape) == 1:
        return shape, shape[0], None, "vector"
    return shape, None, None, "other"


def channels_last(shape: tuple[int, ...], input_shape: tuple[int, ...]) -> bool:
    """Whether a 3-D feature is an (H, W, C) map (timm Swin stages, ConvNeXt block internals), not (C, H, W).

    A channels-first map keeps the image's aspect ratio in its last two dims; a channels-last one in its first
    two. Only a feature whose first two dims keep it and whose last two do not counts, so a (C, H, W) map with
    C equal to the side (``16×16×16`` of a square image) stays a map.
    """
    if len(shape) != 3 or len(input_shape) != 3:
        return False
    _, height, width = input_shape
    a, b, c = shape
    return a * width == b * height and b * width != c * height


def first_tensor(*values: Any) -> torch.Tensor | None:
    """The first tensor found walking ``values`` depth first (tuples, lists, dicts)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)):
            found = first_tensor(*value)
        elif isinstance(value, dict):
            found = first_tensor(*value.values())
        else:
            found = None
        if found is not None:
            return found
    return None


def probe_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic ``randn`` batch of ``PROBE_BATCH`` on the model's device and dtype.

    Uses its own generator, so the global RNG is left untouched.
    """
    param = next(iter(model.parameters()), None)
    if param is None:
        param = next(iter(model.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((PROBE_BATCH, *input_shape), generator=gen)
    return x.to(device=device, dtype=dtype)


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag on exit.

    ``model.train(mode)`` would flatten a mixed state (e.g. frozen BatchNorm in a
    training model); this puts each module back exactly as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class LayerMap:
    """The ordered, tappable layers of one model, as traced by one method.

    ``layers`` lists plain names in execution order; ``map[name]`` also accepts
    ``NAME:input`` / ``NAME:output`` and raises ``UnknownLayerError`` with the
    nearest names otherwise. ``output`` describes the model's own output (read
    from the same probe, so nothing else needs a forward to count logits);
    ``fixed_args`` are the ``forward`` arguments the fx graph was traced with
    fixed at their defaults (``{"feats": False}``), empty when none were.
    """

    def __init__(
        self,
        model: str,
        method: str,
        input_shape: tuple[int, ...],
        layers: list[LayerInfo],
        inputs: dict[str, LayerInfo] | None = None,
        output: LayerInfo | None = None,
        fixed_args: dict[str, Any] | None = None,
    ):
        if method not in ("fx", "hooks"):
            raise ValueError(f"method must be 'fx' or 'hooks', got {method!r}")
        self.model = model
        self.method = method
        self.input_shape = tuple(input_shape)
        self.layers = list(layers)
        self._by_name = {info.name: info for info in self.layers}
        if len(self._by_name) != len(self.layers):
            raise ValueError(f"duplicate layer names in the layer map of {model}")
        # The ``NAME:input`` infos, keyed by plain name (absent: the layer has no tensor input).
        self._inputs = dict(inputs or {})
        self.output = output
        self.fixed_args = dict(fixed_args or {})

    def __repr__(self) -> str:
        return (
            f"LayerMap(model={self.model!r}, method={self.method!r}, "
            f"input_shape={self.input_shape}, layers={len(self.layers)})"
        )

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def logit_count(self) -> int | None:
        """K when the model returns one (B, K) tensor (its logits), else None."""
        out = self.output
        return out.channels if out is not None and out.layout == "vector" else None

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.layers)

    def names(self) -> list[str]:
        """Plain layer names in execution order (no ``:input`` / ``:output``)."""
        return [info.name for info in self.layers]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except (KeyError, ValueError):
            return False
        return True

    def __getitem__(self, name: str) -> LayerInfo:
        try:
            base, suffix = split_name(name)
        except ValueError as err:
            raise UnknownLayerError(f"{err} (model {self.model})", name) from None
        info = self._by_name.get(base)
        if info is None:
            near = self.nearest(base)
            hint = f"nearest: {', '.join(near)}" if near else "no similar names"
            extra = " (traced with hooks: only module names can be tapped)" if self.method == "hooks" else ""
            raise UnknownLayerError(f"no layer {base!r} in {self.model}; {hint}{extra}", base, near)
        if suffix == "output":
            return info
        inp = self._inputs.get(base)
        if inp is None:
            raise UnknownLayerError(
                f"layer {base!r} in {self.model} has no tensor input, so {name!r} cannot be tapped", name
            )
        return inp

    def nearest(self, name: str, n: int = 5) -> list[str]:
        """Up to ``n`` known names close to ``name``: close spellings, then prefix matches."""
        base = name.partition(":")[0]
        names = self.names()
        found: list[str] = []

        def add(candidates: Sequence[str]) -> None:
            for cand in candidates:
                if len(found) < n and cand not in found:
                    found.append(cand)

        add(suggest(base, names, n=n, cutoff=0.6))
        # Names that extend what was typed ("layer3.1.con" -> "layer3.1.conv1").
        add([cand for cand in names if cand.startswith(base)])
        # The deepest existing ancestor of a dotted name, then its children
        # ("layer3.7.conv1" -> "layer3", "layer3.0", ...).
        parts = base.split(".")
        for k in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:k])
            if ancestor in self._by_name:
                add([ancestor])
                add([cand for cand in names if cand.startswith(ancestor + ".") and cand.count(".") == k])
                break
        if len(found) < n:
            add(suggest(base, names, n=n, cutoff=0.4))
        return found

    def to_json(self) -> list[dict[str, Any]]:
        """One dict per layer: name, kind, shape, channels, stride, layout."""
        return [info.to_json() for info in self.layers]
