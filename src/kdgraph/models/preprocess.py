"""What input a model was trained for: mean, std, input size and interpolation (``Preprocessing``).

A pretrained model expects its inputs normalised with the statistics it was trained with, at the resolution it was
trained at. That is published with the weights: timm's ``pretrained_cfg``, a torchvision weights enum's
``transforms()``, a Hugging Face model's ``preprocessor_config.json``, and for the zoo's ``weights: builtin`` a small
JSON record beside each shipped file (``models/weights/NAME.json``). :func:`published_preprocessing` reads it for a
model reference, by scheme (``PUBLISHED``), without building the model. The spec's ``input:`` key (``teacher.input``,
``student.input``) overrides it field by field; the data's own normalisation fills what neither gives
(``kdgraph.graph.inputs`` resolves the three).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kdgraph.models.weights import BUILTIN_DIR

__all__ = ["Preprocessing", "PUBLISHED", "published_preprocessing", "INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""The resampling modes an input conversion may use (``torch.nn.functional.interpolate`` modes)."""


@dataclass(frozen=True)
class Preprocessing:
    """A model's expected input. A field left None is not known (the data's own value is used for it).

    ``size`` is ``(H, W)``; ``source`` says where the values came from (shown by ``kdgraph inspect``)."""

    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    size: Optional[tuple[int, int]] = None
    interpolation: Optional[str] = None
    source: str = ""

    def over(self, base: Optional["Preprocessing"]) -> "Preprocessing":
        """These values where given, ``base``'s elsewhere (the spec's ``input:`` over the published metadata)."""
        if base is None:
            return self
        source = " over ".join(s for s in (self.source if self.known else "", base.source) if s)
        return Preprocessing(self.mean or base.mean, self.std or base.std, self.size or base.size,
                             self.interpolation or base.interpolation, source)

    @property
    def known(self) -> bool:
        """Whether anything is given."""
        return any(v is not None for v in (self.mean, self.std, self.size, self.interpolation))


def _size(value: Any) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value[-2:] if len(value) >= 2 else (value[0], value[0])


def _timm(name: str, kwargs: dict[str, Any]) -> Optional[Preprocessing]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    size = _size(kwargs.get("img_size")) or _size(cfg.input_size)
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bilinear"
    return Preprocessing(tuple(cfg.mean), tuple(cfg.std), size, interpolation, "timm pretrained_cfg")


def _torchvision(name: str, kwargs: dict[str, Any]) -> Optional[Preprocessing]:
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        return None
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    crop = getattr(transforms, "crop_size", None)
    mode = str(getattr(transforms, "interpolation", "bilinear")).rsplit(".", 1)[-1].lower()
    return Preprocessing(tuple(mean) if mean else None, tuple(std) if std else None, _size(crop),
                         mode if mode in INTERPOLATIONS else "bilinear", "torchvision weights transforms")


_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def hf_preprocessing(config: dict[str, Any]) -> Preprocessing:
    """A Hugging Face ``preprocessor_config.json`` (``image_mean``, ``image_std``, ``size``, ``crop_size``,
    ``resample``) as a :class:`Preprocessing`."""
    size = config.get("crop_size") if config.get("do_center_crop") else None
    size = size or config.get("size")
    if isinstance(size, dict):
        size = ((size["height"], size["width"]) if "height" in size else
                _size(size.get("shortest_edge")) if "shortest_edge" in size else None)
    mean, std = config.get("image_mean"), config.get("image_std")
    return Preprocessing(tuple(float(v) for v in mean) if mean else None,
                         tuple(float(v) for v in std) if std else None, _size(size),
                         _PIL_RESAMPLE.get(config.get("resample"), "bilinear"), "preprocessor_config.json")


def _hf(name: str, kwargs: dict[str, Any]) -> Optional[Preprocessing]:
    from kdgraph.models.hf import find_file

    path = find_file(name, "preprocessor_config.json")
    if path is None:
        return None
    return hf_preprocessing(json.loads(Path(path).read_text()))


def _zoo(name: str, kwargs: dict[str, Any]) -> Optional[Preprocessing]:
    """The record shipped beside a zoo model's builtin weights: what they were trained with (the zoo teachers:
    Fashion-MNIST at 28×28, normalised with the data set's own mean and std by ``specs/teachers/NAME.yaml``). The
    builtin weights fit only the default kwargs, so with kwargs nothing is published."""
    path = BUILTIN_DIR / f"{name}.json"
    if kwargs or not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    mode = cfg.get("interpolation")
    return Preprocessing(tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                         _size(cfg.get("input_size")), mode if mode in INTERPOLATIONS else "bilinear",
                         "builtin weights")


PUBLISHED: dict[str, Callable[[str, dict[str, Any]], Optional[Preprocessing]]] = {
    "timm": _timm,
    "torchvision": _torchvision,
    "hf": _hf,
    "kdgraph": _zoo,
}
"""Scheme -> reader of the preprocessing published with a model's trained weights (``pretrained``; the zoo's
``builtin``), None where none is published."""


def published_preprocessing(ref: str, kwargs: Optional[dict[str, Any]] = None) -> Optional[Preprocessing]:
    """The preprocessing published for ``ref``'s pretrained weights, or None (a scheme without metadata, a model
    without published weights, a metadata file not in the local cache)."""
    scheme, _, name = ref.partition(":")
    reader = PUBLISHED.get(scheme)
    if reader is None:
        return None
    try:
        return reader(name, dict(kwargs or {}))
    except (ImportError, OSError, ValueError, KeyError, RuntimeError):
        return None
