"""Element-wise feature-matching losses.

Every loss takes a student tensor ``s`` and a teacher tensor ``t`` of the same
shape ``(B, ...)``; everything after dim 0 is treated as one flattened feature
vector per sample. All return a scalar tensor. Low-precision inputs (fp16 /
bf16, e.g. produced under autocast) are computed in float32 with autocast
disabled; float32 and float64 inputs keep their dtype.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, TypeVar, cast

import torch
from torch import Tensor

from kdgraph.losses.registry import register_loss

__all__ = ["mse", "l1", "cosine", "logsum", "logsum_corr", "feature_distance", "LOGSUM_FLOOR"]

#: Floor applied to the sum inside :func:`logsum` so that ``s == t`` gives
#: ``log(LOGSUM_FLOOR)`` (about -27.6) instead of ``-inf``.
LOGSUM_FLOOR: float = 1e-12

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_Fn = TypeVar("_Fn", bound=Callable[..., Tensor])


def _upcast(x: Any) -> Any:
    """Cast fp16/bf16 tensors to float32; leave everything else alone."""
    if isinstance(x, Tensor) and x.dtype in _LOW_PRECISION:
        return x.float()
    return x


#: Device types autocast supports, asked once at import: ``torch.amp.is_autocast_available`` is a C builtin that
#: torch.compile (2.11) cannot trace, so asking inside a loss broke the compiled graph in two at every loss term
#: (measured on an H200: three CUDA graphs per step instead of two, 0.965x the hand-written step).
_AUTOCAST_DEVICES = {dev: torch.amp.is_autocast_available(dev) for dev in ("cpu", "cuda", "xpu", "mps", "hpu")}


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """A context with autocast disabled on ``device_type`` (a null context where autocast does not exist)."""
    available = _AUTOCAST_DEVICES.get(device_type)
    if available is None:  # a device type not asked at import: ask once, outside the hot path from then on
        available = _AUTOCAST_DEVICES[device_type] = torch.amp.is_autocast_available(device_type)
    return torch.autocast(device_type=device_type, enabled=False) if available else contextlib.nullcontext()


def fp32_compute(fn: _Fn) -> _Fn:
    """Decorator: run ``fn`` with autocast off and fp16/bf16 tensors upcast."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        first = args[0] if args else next(iter(kwargs.values()))
        with autocast_off(first.device.type):
            args = tuple(_upcast(a) for a in args)
            kwargs = {k: _upcast(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return cast(_Fn, wrapper)


def flatten_pair(s: Tensor, t: Tensor, same_shape: bool = True) -> tuple[Tensor, Tensor]:
    """Validate a (student, teacher) pair and flatten both to ``(B, D)``."""
    if s.ndim < 1 or t.ndim < 1:
        raise ValueError(f"expected tensors of shape (B, ...), got {tuple(s.shape)} and {tuple(t.shape)}")
    if same_shape and s.shape != t.shape:
        raise ValueError(f"student and teacher shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"batch sizes differ: {s.shape[0]} vs {t.shape[0]}")
    if s.shape[0] == 0:
        raise ValueError("empty batch")
    return s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)


@register_loss("mse", kind="feature")
@fp32_compute
def mse(s: Tensor, t: Tensor) -> Tensor:
    """Mean squared error: ``L = mean_{b,k} (s[b,k] - t[b,k])^2`` over all elements."""
    flatten_pair(s, t)  # shape checks only: the fused kernel below needs no (copying) reshape of channels_last maps
    return torch.nn.functional.mse_loss(s, t)


@register_loss("l1", kind="feature")
@fp32_compute
def l1(s: Tensor, t: Tensor) -> Tensor:
    """Mean absolute error: ``L = mean_{b,k} |s[b,k] - t[b,k]|`` over all elements."""
    flatten_pair(s, t)
    return torch.nn.functional.l1_loss(s, t)


@register_loss("cosine", kind="feature")
@fp32_compute
def cosine(s: Tensor, t: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine distance: ``L = mean_b (2 - 2 cos(s_b, t_b))``.

    ``s_b``/``t_b`` are the flattened per-sample vectors, each normalised as
    ``v / max(||v||_2, eps)`` (a zero vector therefore has cosine 0 with anything).
    This equals ``mean_b ||s_b/|s_b| - t_b/|t_b|||^2``; range [0, 4].
    """
    s2, t2 = flatten_pair(s, t)
    sn = s2 / torch.linalg.vector_norm(s2, dim=1, keepdim=True).clamp_min(eps)
    tn = t2 / torch.linalg.vector_norm(t2, dim=1, keepdim=True).clamp_min(eps)
    return (2.0 - 2.0 * (sn * tn).sum(dim=1)).mean()


@register_loss("logsum", kind="feature")
@fp32_compute
def logsum(s: Tensor, t: Tensor, alpha: float = 4.0) -> Tensor:
    """Log-sum distance (Miles & Mikolajczyk, AAAI 2024):
    ``L = log max(sum_{b,k} |s[b,k] - t[b,k]|^alpha, LOGSUM_FLOOR)``.

    The sum runs over the batch and all feature dims (no mean). Without the
    floor ``s == t`` would give ``log 0 = -inf``; with it the loss is bounded
    below by ``log(1e-12)`` and its gradient there is zero. Internally the sum
    is computed as ``m^alpha * sum (|d|/m)^alpha`` with ``m = max|d|``
    (detached) so float32 neither overflows nor underflows; the value and
    gradient are identical to the direct formula. Requires ``alpha > 0``
    (``alpha >= 1`` for a finite gradient at ``s == t``).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    s2, t2 = flatten_pair(s, t)
    d = (s2 - t2).abs()
    m = d.detach().amax()
    m = torch.where(m > 0, m, torch.ones_like(m))
    inner = (d / m).pow(alpha).sum().clamp_min(torch.finfo(d.dtype).tiny)
    log_sum = alpha * torch.log(m) + torch.log(inner)
    return log_sum.clamp_min(math.log(LOGSUM_FLOOR))


@register_loss("logsum_corr", kind="feature")
@fp32_compute
def logsum_corr(s: Tensor, t: Tensor, alpha: float = 4.0, eps: float = 1e-5) -> Tensor:
    """Log-sum of the cross-correlation diagonal (Miles & Mikolajczyk, AAAI 2024):
    ``c_k = (1/B) sum_b s[b,k] t[b,k]``, ``L = log(sum_k |c_k - 1|^alpha + eps)``.

    ``k`` runs over the flattened features. The paper batch-normalises both
    features first; that is the caller's job (e.g. an alignment adapter).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    s2, t2 = flatten_pair(s, t)
    c = (s2 * t2).mean(dim=0)
    return torch.log((c - 1.0).abs().pow(alpha).sum() + eps)


@fp32_compute
def feature_distance(s: Tensor, t: Tensor) -> Tensor:
    """Euclidean distance between the whole batches, ``L = ||s - t||_2 = sqrt(sum_{b,k} (s - t)^2)``.

    The feature term of self-distillation as in the published "Be Your Own Teacher" code (``torch.dist``): not
    averaged over the batch, not squared.
    """
    s, t = flatten_pair(s, t)
    diff = (s - t).flatten()
    return torch.sqrt((diff * diff).sum().clamp_min(1e-24))
