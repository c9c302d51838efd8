"""What each model sees in a training step: augmentation, shared or independent views, mixup/cutmix, targets.

Function matching (Beyer et al., CVPR 2022) needs teacher and student to see the *same* augmented and mixed
batch (``data.views: shared``); ``independent`` gives the teachers their own augmentation and mixing ratio (the
ablation: independent noise on the same images, each mixed with the same partner). With mixing, the labels become
soft targets ``λ·onehot(y) + (1 − λ)·onehot(y_partner)`` for the CE term.

A view is a function of ``(runtime.seed, view, image index)`` alone (:mod:`kdgraph.data.draws`): in epoch ``e`` the
view number is ``e`` (or ``e mod K`` from a teacher store of K views). Not of the batch the image is in, its place
there, the number of processes or what was drawn before. Per image and view:

- its crop (``crop-flip``: offsets and flip; ``resized-crop-flip``: a box and flip), from its own numbers;
- with mixing, its partner: image ``π_v(i)`` of a permutation ``π_v`` of the training set drawn for the view, seen
  through the partner's own crop of the same view; and its ratio ``a = max(b, 1 − b)``, ``b ~ Beta(α, α)``
  (mixup), or a box of nominal area ``(1 − a)·H·W`` (cutmix).

:class:`ViewParams` holds these numbers for a batch (what a teacher store saves), :class:`ViewMaker` draws them
(:meth:`ViewMaker.draw`), fetches the partners on the host (:meth:`ViewMaker.prepare`) and renders the views on the
device (:meth:`ViewMaker.views`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from kdgraph.data.augment import (crop_flip, crop_flip_offsets, cutmix_boxes, mix_images, mix_targets, paste_boxes,
                                  resized_crop_boxes, resized_crop_flip)
from kdgraph.data.draws import permutation, symmetric_beta, uniforms, view_key
from kdgraph.data.loader import fetch
from kdgraph.spec.schema import DataSpec

__all__ = ["Views", "ViewParams", "ViewMaker", "SHARED", "TEACHER", "crop_padding", "normalised_fill"]

SHARED, TEACHER = 0, 1
"""Roles of a view: the one the student sees (and, with ``data.views: shared``, every teacher), and the teachers' own
(``independent``). Each role draws its own numbers."""
_CROP, _RATIO, _BOX, _PARTNER = 1, 2, 3, 4  # one key per purpose: no two purposes share numbers


@dataclass
class Views:
    """One step's inputs: the student's batch, the teachers' (None: the same tensor), CE targets, hard labels."""

    student: torch.Tensor
    teacher: Optional[torch.Tensor]
    target: torch.Tensor
    labels: torch.Tensor


@dataclass
class ViewParams:
    """The numbers that make one view of each image of a batch (None where the policy has none).

    - ``crop``: ``crop-flip``: ``(B, 3)`` int64 ``(oy, ox, flip)``; ``resized-crop-flip``: ``(B, 5)`` float64
      ``(top, left, height, width, flip)``, the box as fractions of the image.
    - ``partner``: ``(B,)`` int64, the data-set index of the mixing partner; ``partner_crop``: its crop in this view.
    - ``ratio``: ``(B,)`` float64, the image's own label weight λ (mixup: the ratio ``a``; cutmix: the area kept).
    - ``box``: ``(B, 4)`` int64 cutmix box ``(y0, y1, x0, x1)``, pasted from the partner.
    """

    crop: Optional[torch.Tensor] = None
    partner: Optional[torch.Tensor] = None
    partner_crop: Optional[torch.Tensor] = None
    ratio: Optional[torch.Tensor] = None
    box: Optional[torch.Tensor] = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "ViewParams":
        return cls(**{f.name: tensors.get(f.name) for f in fields(cls)})


def crop_padding(data: DataSpec, width: int) -> int:
    """``data.crop_padding``, or its default ``max(1, W // 8)`` (4 px for 32-px images, the CIFAR recipe)."""
    return data.crop_padding if data.crop_padding is not None else max(1, width // 8)


def normalised_fill(pixel: float, norm: Optional[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, ...]:
    """The padding colour ``pixel`` (in [0, 1]) in the batch's space: ``(pixel - mean) / std`` per channel.

    Batches arrive normalised; torchvision pads the [0, 1] image before normalising, so black is 0 there and
    ``-mean / std`` here. Padding the normalised batch with 0 would be mid-grey: a border a teacher trained with
    torchvision's RandomCrop never saw. ``norm=None``: the batch is not normalised."""
    if norm is None:
        return (float(pixel),)
    mean, std = norm
    return tuple((float(pixel) - m) / s for m, s in zip(mean, std))


class ViewMaker:
    """Draws and renders the views of ``data``'s policy for images of ``dataset`` (the training split).

    ``image_shape`` is ``(C, H, W)``; ``norm=(mean, std)`` the normalisation the batches carry, so padding has its
    pixel-space colour (``data.crop_fill``); ``two_views``: there are teachers, so ``data.views: independent`` draws
    a second view for them."""

    def __init__(self, data: DataSpec, *, num_classes: int, seed: int, dataset: Any, image_shape: Sequence[int],
                 norm: Optional[tuple[Sequence[float], Sequence[float]]] = None, two_views: bool = False):
        self.data, self.num_classes, self.seed, self.dataset = data, num_classes, int(seed), dataset
        self.n = len(dataset)
        self.height, self.width = int(image_shape[-2]), int(image_shape[-1])
        self.padding = crop_padding(data, self.width)
        self.fill = normalised_fill(data.crop_fill, norm)
        self.mixing = data.mix.name != "none"
        self.independent = two_views and data.views == "independent"
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        """Whether the views differ from the loader's images at all (augmentation or mixing)."""
        return self.data.augment != "none" or self.mixing

    # -- numbers (host) ------------------------------------------------------------------------------------------
    def _crop(self, index: torch.Tensor, view: int, role: int) -> Optional[torch.Tensor]:
        aug = self.data.augment
        if aug == "none":
            return None
        key = view_key(self.seed, view, role, _CROP)
        if aug == "crop-flip":
            oy, ox, flips = crop_flip_offsets(uniforms(key, index, 3), self.padding)
            return torch.stack([oy, ox, flips.to(torch.int64)], dim=1)
        boxes, flips = resized_crop_boxes(uniforms(key, index, 5), self.data.crop_scale)
        return torch.cat([boxes, flips.to(torch.float64)[:, None]], dim=1)

    def partners(self, view: int) -> torch.Tensor:
        """``π_v``: image ``i``'s mixing partner in view ``view`` is ``π_v[i]`` (a permutation of the training set),
        in every role."""
        if view not in self._perms:
            if len(self._perms) >= 4:  # a view is used for a whole epoch: keep only the last few
                self._perms.pop(next(iter(self._perms)))
            self._perms[view] = permutation(view_key(self.seed, view, SHARED, _PARTNER), self.n)
        return self._perms[view]

    def draw(self, index: torch.Tensor, view: int, role: int = SHARED) -> ViewParams:
        """The numbers of view ``view`` of the images ``index`` (data-set positions, on the CPU) in ``role``."""
        index = index.cpu()
        params = ViewParams(crop=self._crop(index, view, role))
        if not self.mixing:
            return params
        # Every role mixes an image with the same partner: independent views are independent noise on the same pair
        # of images (own crops and ratio), not another image (a teacher mixed with an image the student never sees
        # would teach that image's class as noise).
        params.partner = self.partners(view).index_select(0, index)
        params.partner_crop = self._crop(params.partner, view, role)
        b = symmetric_beta(view_key(self.seed, view, role, _RATIO), index, self.data.mix.alpha)
        a = torch.maximum(b, 1.0 - b)
        if self.data.mix.name == "cutmix":
            params.box, params.ratio = cutmix_boxes(a, uniforms(view_key(self.seed, view, role, _BOX), index, 2),
                                                    self.height, self.width)
        else:
            params.ratio = a
        return params

    def prepare(self, index: torch.Tensor, view: int, stored: Optional[ViewParams] = None) -> dict[str, Any]:
        """What rendering a batch's views needs besides its images, on the host, for the prefetcher to copy: each
        role's numbers and, with mixing, its partners' images and labels. ``stored``: the numbers of the shared view
        read from a teacher store (the teachers do not run, so no teacher view is made)."""
        out: dict[str, Any] = {}
        if not self.active:
            return out
        roles = [(SHARED, stored)] if stored is not None else [(SHARED, None)] + ([(TEACHER, None)] if self.independent
                                                                                 else [])
        for role, given in roles:
            out["student" if role == SHARED else "teacher"] = self._part(given if given is not None else self.draw(index, view, role))
        return out

    def _part(self, params: ViewParams) -> dict[str, torch.Tensor]:
        part = params.tensors()
        if params.partner is not None:
            part["partner_x"], part["partner_y"] = fetch(self.dataset, params.partner)
        return part

    def make(self, x: torch.Tensor, index: torch.Tensor, view: int, role: int = SHARED
             ) -> tuple[torch.Tensor, ViewParams]:
        """View ``view`` of the images ``x`` (at data-set positions ``index``) in ``role``, and its numbers: what
        ``kdgraph teach`` shows the teachers and records."""
        params = self.draw(index, view, role)
        if not self.active:
            return x, params
        part = {k: v.to(x.device) for k, v in self._part(params).items()}
        return self.render(x, part), params

    # -- pixels (device) -----------------------------------------------------------------------------------------
    def _crop_pixels(self, x: torch.Tensor, crop: Optional[torch.Tensor]) -> torch.Tensor:
        if crop is None:
            return x
        if self.data.augment == "crop-flip":
            return crop_flip(x, crop[:, 0], crop[:, 1], crop[:, 2].bool(), self.padding, self.fill)
        return resized_crop_flip(x, crop[:, :4], crop[:, 4] > 0.5)

    def render(self, x: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """The view of ``x`` that ``part`` (one role of :meth:`prepare`, on ``x``'s device) describes."""
        out = self._crop_pixels(x, part.get("crop"))
        if "partner" not in part:
            return out
        partner = self._crop_pixels(part["partner_x"].to(x.dtype), part.get("partner_crop"))
        if "box" in part:
            return paste_boxes(out, partner, part["box"])
        return mix_images(out, partner, part["ratio"])

    def views(self, x: torch.Tensor, y: torch.Tensor, prepared: dict[str, Any]) -> Views:
        """The step's views of the batch ``(x, y)`` from :meth:`prepare`'s output (on the device). Without mixing the
        CE target is ``y`` itself (class indices)."""
        if not prepared:
            return Views(student=x, teacher=None, target=y, labels=y)
        part = prepared["student"]
        student = self.render(x, part)
        target = y
        if "partner" in part:
            target = mix_targets(F.one_hot(y, self.num_classes), F.one_hot(part["partner_y"], self.num_classes),
                                 part["ratio"])
        teacher = self.render(x, prepared["teacher"]) if "teacher" in prepared else None
        return Views(student=student, teacher=teacher, target=target, labels=y)
