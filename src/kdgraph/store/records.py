"""One record per image and view: the numbers of its view and its teachers' outputs, as named tensors.

Names and dtypes (``B`` images of a shard):

=========================== ======================= ========================================================
``view/crop``               int16 ``(B, 3)``         ``crop-flip``: ``(oy, ox, flip)``
``view/crop``               float64 ``(B, 5)``       ``resized-crop-flip``: ``(top, left, height, width, flip)``
``view/partner``            int32 (int64 past 2³¹)   mixing partner (a data-set index)
``view/ratio``              float64 ``(B,)``         the image's label weight λ
``view/box``                int16 ``(B, 4)``         cutmix box ``(y0, y1, x0, x1)``
``t/NAME/logits``           float32 ``(B, K)``       all logits (float64 from a float64 teacher)
``t/NAME/topk_values``      float16 ``(B, k)``       the k largest logits, largest first
``t/NAME/topk_indices``     int16 (int32 past 2¹⁵)   their classes
``t/NAME/topk_rest``        float16 ``(B,)``         log-mean-exp of the other ``K − k`` logits
``t/NAME/tap/LAYER``        float32                  the layer pooled ``(B, C)``, or whole, as its pairs read it
=========================== ======================= ========================================================

Top-k logits are replayed (:func:`decode_logits`) as a full ``(B, K)`` row: the k stored values at their classes and
every other class at ``rest``, the log-mean-exp of the true logits it replaces. At temperature 1 the replayed softmax
is then exactly the teacher's on the k classes (up to float16 rounding) and spreads the remaining probability mass
evenly over the others; at a temperature T ≠ 1 it is the softmax at T of these replayed logits (the other classes'
mass at T is not stored: they share one logit).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from kdgraph.data.views import ViewParams

__all__ = ["encode_params", "decode_params", "encode_logits", "decode_logits", "encode_tap", "decode_tap",
           "float_dtype"]


def float_dtype(t: torch.Tensor) -> torch.dtype:
    """Stored dtype of a teacher output: float64 stays float64, every other float is stored as float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def encode_params(params: ViewParams, n_data: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if params.crop is not None:
        out["view/crop"] = params.crop.to(torch.float64 if params.crop.is_floating_point() else torch.int16)
    if params.partner is not None:
        out["view/partner"] = params.partner.to(torch.int32 if n_data < 2**31 else torch.int64)
    if params.ratio is not None:
        out["view/ratio"] = params.ratio.to(torch.float64)
    if params.box is not None:
        out["view/box"] = params.box.to(torch.int16)
    return out


def decode_params(tensors: dict[str, torch.Tensor]) -> ViewParams:
    """The stored numbers in the dtypes :class:`ViewParams` uses (``partner_crop`` is filled by the reader)."""
    crop = tensors.get("view/crop")
    if crop is not None:
        crop = crop.to(torch.float64 if crop.is_floating_point() else torch.int64)
    long = {k: tensors[f"view/{k}"].to(torch.int64) for k in ("partner", "box") if f"view/{k}" in tensors}
    return ViewParams(crop=crop, ratio=tensors.get("view/ratio"), **long)


def encode_logits(name: str, logits: torch.Tensor, k: Optional[int]) -> dict[str, torch.Tensor]:
    """A teacher's logits, all of them or (``k``) the top-k values, their classes and the rest's log-mean-exp."""
    prefix = f"t/{name}/"
    if k is None:
        return {prefix + "logits": logits.to(float_dtype(logits))}
    z = logits.double()
    values, indices = torch.topk(z, k, dim=1)
    rest = z.scatter(1, indices, float("-inf")).logsumexp(dim=1) - math.log(z.shape[1] - k)
    index_dtype = torch.int16 if z.shape[1] <= 2**15 else torch.int32
    return {prefix + "topk_values": values.half(), prefix + "topk_indices": indices.to(index_dtype),
            prefix + "topk_rest": rest.half()}


def decode_logits(name: str, tensors: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """The ``(B, K)`` logits a record gives back: as stored, or from the top-k (the module doc)."""
    prefix = f"t/{name}/"
    if prefix + "logits" in tensors:
        return tensors[prefix + "logits"]
    values, indices = tensors[prefix + "topk_values"].float(), tensors[prefix + "topk_indices"].long()
    full = tensors[prefix + "topk_rest"].float()[:, None].expand(len(values), classes).clone()
    return full.scatter_(1, indices, values)


def encode_tap(name: str, tap: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"t/{name}/tap/{tap}": value.to(float_dtype(value))}


def decode_tap(value: torch.Tensor, layout: str, pooled: bool) -> torch.Tensor:
    """A stored layer output as the graph's teacher-side adapters take it: whole as stored, or a pooled ``(B, C)``
    as a 1×1 map ``(B, C, 1, 1)`` (maps) or one token ``(B, 1, D)`` (tokens), which the pair's own pooling step (mean
    over the positions, or the class token) turns back into exactly the stored vector."""
    if not pooled or layout == "vector":
        return value
    return value[:, :, None, None] if layout == "map" else value[:, None, :]
