"""Each model sees the input it was trained for: the data is normalised and sized for the student, and every
teacher gets an ``InputAdapter`` on the device that converts the same batch (re-normalise, resize, grey to RGB).

The conversion is applied to the batch the student sees, after augmentation and mixing, so shared views stay
shared: the teacher gets the same augmented images converted, never a second draw. Where a teacher's expected input
comes from is resolved per field by :func:`teacher_preprocessing`: the spec's ``input:`` key, else the metadata
published with ``weights: pretrained`` or the zoo's ``weights: builtin`` (``kdgraph.models.preprocess``), else the data
set's own values. "The data set's own" means its own statistics (Fashion-MNIST's mean and std), never the
``student.input`` the batch was normalised with for the student: that override is the student's, not the teacher's.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdgraph.errors import SpecError, located
from kdgraph.models.preprocess import Preprocessing, published_preprocessing
from kdgraph.spec.schema import ModelSpec, Spec

__all__ = ["InputAdapter", "spec_preprocessing", "teacher_preprocessing", "student_preprocessing", "teacher_inputs"]

_TOL = 1e-6  # two normalisations closer than this are the same


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= _TOL for x, y in zip(a, b))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


class InputAdapter(nn.Module):
    """A data batch ``(B, C, H, W)`` normalised with ``(data_mean, data_std)`` → the model's expected input.

    In order: a one-channel batch repeated to the model's channels; resized to ``size`` (antialiased when
    shrinking); re-normalised, ``x·(s_d / s_m) + (m_d − m_m) / s_m`` per channel, which is exactly
    ``(pixel − m_m) / s_m`` for the pixel the data normalised as ``(pixel − m_d) / s_d``. A mean or std the target
    leaves out is the data set's own (``own_mean``, ``own_std``; default: the batch's). Parameter-free; an adapter
    with nothing to do returns the batch itself (``identity``)."""

    def __init__(self, data_mean: Sequence[float], data_std: Sequence[float], data_shape: Sequence[int],
                 target: Optional[Preprocessing] = None, own_mean: Optional[Sequence[float]] = None,
                 own_std: Optional[Sequence[float]] = None):
        super().__init__()
        target = target or Preprocessing()
        c, h, w = (int(v) for v in data_shape)
        mean = tuple(target.mean) if target.mean is not None else None
        std = tuple(target.std) if target.std is not None else None
        channels = len(mean or std or ()) or c
        if channels != c and c != 1:
            raise ValueError(f"the model expects {channels} channels (its mean/std) but the data has {c}")
        self.repeat = channels if channels != c else None

        def per_channel(values: Sequence[float]) -> tuple[float, ...]:
            return tuple(values) * (channels if len(values) == 1 and channels > 1 else 1)

        d_mean, d_std = per_channel(data_mean), per_channel(data_std)
        self.data_mean, self.data_std = d_mean, d_std
        self.mean = mean or per_channel(own_mean if own_mean is not None else data_mean)
        self.std = std or per_channel(own_std if own_std is not None else data_std)
        self.renormalise = not (_close(self.mean, d_mean) and _close(self.std, d_std))
        self.size = tuple(target.size) if target.size is not None and tuple(target.size) != (h, w) else None
        self.mode = target.interpolation or "bilinear"
        self.data_shape = (c, h, w)
        self.out_shape = (channels, *(self.size or (h, w)))
        filled = "the data set's statistics"
        self.source = (target.source or "given") if mean and std else \
            f"{target.source} over {filled}" if target.source else filled
        scale = torch.tensor([ds / s for ds, s in zip(d_std, self.std)], dtype=torch.float64)
        shift = torch.tensor([(dm - m) / s for dm, m, s in zip(d_mean, self.mean, self.std)], dtype=torch.float64)
        self.register_buffer("scale", scale.view(1, -1, 1, 1).float(), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1).float(), persistent=False)

    @property
    def identity(self) -> bool:
        return self.repeat is None and self.size is None and not self.renormalise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat is not None:
            x = x.expand(-1, self.repeat, -1, -1)
        if self.size is not None:
            shrink = self.size[0] < x.shape[-2] or self.size[1] < x.shape[-1]
            extra = {} if self.mode == "nearest" else {"align_corners": False, "antialias": shrink}
            x = F.interpolate(x, size=self.size, mode=self.mode, **extra)
        if self.renormalise:
            x = torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))
        return x

    def steps(self) -> list[str]:
        """The conversion in words, as ``kdgraph inspect`` prints it (empty: the model reads the batch as it is)."""
        out = []
        if self.repeat is not None:
            out.append(f"grey → {self.repeat} channels")
        if self.size is not None:
            out.append(f"resize {self.data_shape[1]}×{self.data_shape[2]} → {self.size[0]}×{self.size[1]} {self.mode}")
        if self.renormalise:
            out.append(f"re-normalise mean {_fmt(self.data_mean)} → {_fmt(self.mean)}, std {_fmt(self.data_std)} → "
                       f"{_fmt(self.std)}")
        return out

    def extra_repr(self) -> str:
        return "; ".join(self.steps()) or "identity"


def spec_preprocessing(model: ModelSpec) -> Optional[Preprocessing]:
    """The spec's ``input:`` of a model as a :class:`Preprocessing` (None when the key is absent)."""
    cfg = model.input
    if cfg is None:
        return None
    size = (cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size) if cfg.size else None
    return Preprocessing(tuple(cfg.mean) if cfg.mean else None, tuple(cfg.std) if cfg.std else None, size,
                         cfg.interpolation, "spec")


def _published(model: ModelSpec) -> Optional[Preprocessing]:
    """The metadata of the weights ``model`` loads: only ``weights: pretrained`` (and the zoo's ``builtin``) loads the
    weights it describes."""
    return published_preprocessing(model.model, model.kwargs) if model.weights in ("pretrained", "builtin") else None


def student_preprocessing(spec: Spec) -> Optional[Preprocessing]:
    """What the data should be normalised and sized for: the student's ``input:`` over its published metadata."""
    given, published = spec_preprocessing(spec.student), _published(spec.student)
    return given.over(published) if given is not None else published


def teacher_preprocessing(spec: Spec, name: str, data_mean: Sequence[float], data_std: Sequence[float],
                          live: bool = False) -> tuple[Optional[Preprocessing], Optional[str]]:
    """A teacher's expected input and, when it cannot be determined but probably differs from the data set's own
    statistics (``data_mean``, ``data_std``: what it is then fed), a warning naming the key to set. ``live``: a
    module passed from Python (its own; only ``input:`` is read)."""
    tspec = spec.teacher_specs[name]
    given = spec_preprocessing(tspec)
    published = None if live else _published(tspec)
    target = given.over(published) if given is not None else published
    if live or (target is not None and target.mean is not None and target.std is not None):
        return target, None
    guess = published_preprocessing(tspec.model, tspec.kwargs) if tspec.weights not in (None, "builtin") else None
    if guess is None or guess.mean is None or (_close(guess.mean, data_mean) and _close(guess.std or (), data_std)):
        if tspec.weights == "pretrained" and target is None:
            key, path = spec.teacher_key(name)
            return None, (f"{located(f'{key}.input', spec.line_of(*path))}: {tspec.model} publishes no preprocessing "
                          f"with its weights, so kdgraph feeds it the data set's normalisation (mean "
                          f"{_fmt(data_mean)}, std {_fmt(data_std)}); set {key}.input: {{mean: [...], std: [...], size: N}} to what "
                          "it was trained with")
        return target, None
    key, path = spec.teacher_key(name)
    return target, (f"{located(f'{key}.input', spec.line_of(*path))}: {tspec.model}'s weights come from "
                    f"{tspec.weights}, so kdgraph cannot tell how its inputs were normalised; it feeds it the data "
                    f"set's (mean {_fmt(data_mean)}, std {_fmt(data_std)}), while the published weights of this model "
                    f"expect mean {_fmt(guess.mean)}, std {_fmt(guess.std or ())}; set {key}.input: {{mean: [...], "
                    "std: [...]}} to the normalisation it was trained with")


def teacher_inputs(spec: Spec, data_mean: Sequence[float], data_std: Sequence[float], data_shape: Sequence[int],
                   live: frozenset[str] = frozenset(), own_mean: Optional[Sequence[float]] = None,
                   own_std: Optional[Sequence[float]] = None) -> tuple[dict[str, InputAdapter], list[str]]:
    """An :class:`InputAdapter` per teacher of the spec, and the warnings for teachers whose input is unknown.
    ``data_mean``/``data_std``: the batch's normalisation (the student's); ``own_mean``/``own_std``: the data set's
    own statistics, what a teacher is fed where neither its ``input:`` nor its weights say (default: the batch's)."""
    own_mean = tuple(own_mean) if own_mean is not None else tuple(data_mean)
    own_std = tuple(own_std) if own_std is not None else tuple(data_std)
    adapters, warnings = {}, []
    for name in spec.teacher_specs:
        target, warning = teacher_preprocessing(spec, name, own_mean, own_std, live=name in live)
        if warning:
            warnings.append(warning)
        try:
            adapters[name] = InputAdapter(data_mean, data_std, data_shape, target, own_mean, own_std)
        except ValueError as err:
            key, path = spec.teacher_key(name)
            raise SpecError(f"{err}; set {key}.input.mean and std with one value per channel of the data",
                            key=f"{key}.input", line=spec.line_of(*path, "input")) from None
    return adapters, warnings
