"""Contrastive Representation Distillation (CRD): embedding heads, a momentum memory bank, an NCE loss.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

Student and teacher features of the same input are a positive pair, features of different inputs negatives; a
noise-contrastive estimate (NCE) of the critic that tells them apart lower-bounds their mutual information.
Negatives come from a memory bank holding one embedding per training example (N x d, for each model), updated
with momentum at the batch's data-set indices::

    v^s = h_s(f^s),  v^t = h_t(f^t)                 h: linear + L2 normalisation (CRDEmbed), d = 128
    idx[b] = (i_b, n_1, ..., n_K)                   i_b the data-set index of sample b, n_k drawn uniformly in [0, N)
    P^s[b, k] = exp(<M^t[idx[b, k]], v^s_b> / tau) / Z^s       (student anchor against the teacher bank)
    P^t[b, k] = exp(<M^s[idx[b, k]], v^t_b> / tau) / Z^t       (teacher anchor against the student bank)
    Z = N * mean_{b,k} exp(<., .> / tau)            estimated once, on the first batch, then fixed
    nce(P) = -(1/B) sum_b [ log(P[b,0] / (P[b,0] + K/N + eps)) + sum_{k>=1} log((K/N) / (P[b,k] + K/N + eps)) ]
    L = nce(P^s) + nce(P^t)
    after the scores:  M[i_b] <- normalise(m M[i_b] + (1 - m) v_b)      for both banks

Paper defaults: ``d = 128``, ``K = 16384`` negatives, ``tau = 0.07``, momentum ``m = 0.5``, loss weight 0.8
(``-b 0.8``; ResNet32x4 -> ResNet8x4 75.51 on CIFAR-100), the embeddings taken from the penultimate (pooled)
features.

Reference code followed: RepDistiller ``crd/criterion.py`` and ``crd/memory.py`` (the official code; mdistiller's
``CRD.py`` is a copy): bank initialised uniformly in ``[-s, s]``, ``s = 1 / sqrt(d / 3)``; ``Z`` from the first
batch's scores times ``N``; ``eps = 1e-7``; the positive at column 0; the update after the scores, renormalised.
Sampling: by default the negatives are drawn uniformly by data-set index (the positive itself may be drawn, as in
the reference's ``AliasMethod`` path with ``contrast_idx=None``). The published CIFAR-100 runs draw the
negatives in the *data loader* from the other classes only (``CIFAR100InstanceSample``, ``mode="exact"``);
passing the data set's ``labels`` to :class:`CRDMemory` reproduces that (uniform over the examples of the other
classes). Every draw takes an explicit ``torch.Generator``, so the same generator state gives the same negatives
and a resumed run is bit-identical when the generator's state is checkpointed with the bank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgraph.losses.checks import check_positive
from kdgraph.losses.feature import autocast_off, fp32_compute
from kdgraph.losses.registry import register_loss
from kdgraph.losses.state import RandomStream

__all__ = ["NEEDS", "CRDEmbed", "CRDMemory", "Contrast", "crd", "crd_term", "nce_loss"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "crd": (
        "pooled vectors (B, D), any widths, through one trainable CRDEmbed per model (linear + L2 norm to d = 128), "
        "trained with the student and saved with the adapters (the teacher's head is trained too)",
        "data-set indices: the batch's indices in the training set (B,), from the loader",
        "state across steps: CRDMemory (two N x d float32 banks and the two Z constants as buffers), checkpointed "
        "with the adapters; the loss takes the memory's scores",
        "a torch.Generator for the negatives whose state is checkpointed with the memory (bit-identical resume)",
        "the training set's size N (and, for the published sampling, its labels (N,))",
    ),
}


class CRDEmbed(nn.Module):
    """CRD's embedding head: flatten, ``nn.Linear(in_features, dim)``, L2-normalise each row."""

    def __init__(self, in_features: int, dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


class CRDMemory(nn.Module):
    """CRD's memory bank: one student and one teacher embedding per training example, plus the NCE constants.

    Buffers (all in the state dict): ``memory_student``, ``memory_teacher`` ``(num_data, dim)``, ``z_student``,
    ``z_teacher`` (``-1`` until the first batch sets them). ``labels`` (the data set's class of every example,
    ``(num_data,)``) switches the negatives to the other classes only; it is derived data, kept out of the state
    dict. ``generator`` seeds the bank's initialisation.

    ``forward(student, teacher, indices, *, generator=None, contrast_index=None)`` takes the two ``(B, dim)``
    embeddings and the batch's data-set indices, draws the negatives (:meth:`sample`) unless ``contrast_index``
    ``(B, K + 1)`` is given, returns the scores ``(P^s, P^t)``, each ``(B, K + 1)``, and then updates both banks at
    ``indices`` (:meth:`update`). Runs in the banks' dtype with autocast off.
    """

    memory_student: Tensor
    memory_teacher: Tensor
    z_student: Tensor
    z_teacher: Tensor

    def __init__(
        self,
        num_data: int,
        dim: int = 128,
        *,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_data < 1 or dim < 1 or num_negatives < 1:
            raise ValueError(
                f"CRDMemory: num_data, dim and num_negatives must be >= 1, got {num_data}, {dim}, {num_negatives}"
            )
        check_positive("CRDMemory", temperature=temperature)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CRDMemory: momentum must be in [0, 1), got {momentum}")
        self.num_data, self.dim, self.num_negatives = num_data, dim, num_negatives
        self.temperature, self.momentum = temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3.0)
        for name in ("memory_student", "memory_teacher"):
            bank = torch.rand(num_data, dim, generator=generator) * (2 * bound) - bound
            self.register_buffer(name, bank)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        self.class_exclusive = labels is not None
        if labels is not None:
            if labels.shape != (num_data,) or labels.is_floating_point():
                raise ValueError(
                    f"CRDMemory: labels must be int class indices of shape ({num_data},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            labels = labels.long()
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels)
            if int(counts.max()) == num_data:
                raise ValueError("CRDMemory: every example has the same label: no negatives of another class")
            offsets = torch.cumsum(counts, 0) - counts
            self.register_buffer("labels", labels, persistent=False)
            self.register_buffer("order", order, persistent=False)
            self.register_buffer("class_count", counts, persistent=False)
            self.register_buffer("class_offset", offsets, persistent=False)

    def sample(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, K + 1)`` data-set indices: ``indices`` in column 0, then ``K`` negatives.

        Uniform over ``[0, N)`` (with replacement); with ``labels``, uniform over the examples whose class differs
        from the anchor's. Drawn on ``generator``'s device (the banks' device when ``None``: the global RNG);
        returned on the banks' device. Same generator state -> same indices.
        """
        if indices.ndim != 1 or indices.is_floating_point():
            raise ValueError(
                f"CRDMemory.sample: indices must be int data-set indices (B,), got {indices.dtype} "
                f"{tuple(indices.shape)}"
            )
        device = generator.device if generator is not None else self.memory_student.device
        shape = (indices.shape[0], self.num_negatives)
        if not self.class_exclusive:
            negatives = torch.randint(self.num_data, shape, generator=generator, device=device)
        else:
            y = self.labels[indices.to(self.labels.device)]
            n_same = self.class_count[y].to(device)[:, None]
            start = self.class_offset[y].to(device)[:, None]
            u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
            r = (u * (self.num_data - n_same)).long().clamp_max(self.num_data - n_same - 1)
            # r ranks the examples of the other classes in label-sorted order: skip the anchor's class block
            negatives = self.order.to(device)[r + (r >= start) * n_same]
        negatives = negatives.to(self.memory_student.device)
        return torch.cat([indices.to(negatives.device)[:, None], negatives], dim=1)

    @torch.no_grad()
    def update(self, indices: Tensor, student: Tensor, teacher: Tensor) -> None:
        """``M[i] <- normalise(m M[i] + (1 - m) v)`` at the batch's ``indices``, for both banks."""
        idx = indices.to(self.memory_student.device)
        for bank, v in ((self.memory_student, student), (self.memory_teacher, teacher)):
            mixed = bank[idx] * self.momentum + v.detach().to(bank.dtype) * (1.0 - self.momentum)
            bank.index_copy_(0, idx, F.normalize(mixed, dim=1))

    def _scores(self, anchor: Tensor, bank: Tensor, contrast_index: Tensor, z: Tensor) -> Tensor:
        """``exp(<bank[j], anchor_b> / tau) / Z`` for every ``j`` of row ``b`` of ``contrast_index``.

        The dot products are taken one of two equal ways, whichever moves less memory. The published way gathers
        the ``K + 1`` rows of every example, a ``(B, K + 1, dim)`` copy (1.1 GB at B = 128, K = 16384), and
        multiplies. While the bank holds no more than ``8 (K + 1)`` rows (CIFAR, Fashion-MNIST), it is far cheaper
        to score the anchors against the whole bank with one ``(N, dim) @ (dim, B)`` product and pick the
        entries (an order of magnitude per step on a CPU core at N = 60000, K = 16384).
        """
        if self.num_data <= 8 * contrast_index.shape[1]:  # a copy: the product's backward needs the bank of now
            dots = (bank.detach().clone() @ anchor.t()).t().gather(1, contrast_index)
        else:
            dots = torch.bmm(bank[contrast_index].detach(), anchor[:, :, None]).squeeze(2)
        out = torch.exp(dots / self.temperature)
        with torch.no_grad():  # Z: set once, from the first batch (no host sync: a select, not an `if`)
            z.copy_(torch.where(z < 0, out.detach().mean() * self.num_data, z))
        return out / z.clone()  # a copy: the next step's in-place update of z must not touch this graph

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        indices: Tensor,
        *,
        generator: torch.Generator | None = None,
        contrast_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        for name, v in (("student", student), ("teacher", teacher)):
            if v.ndim != 2 or v.shape[1] != self.dim:
                raise ValueError(f"CRDMemory: {name} embeddings must be (B, {self.dim}), got {tuple(v.shape)}")
        if student.shape[0] != teacher.shape[0] or indices.shape != (student.shape[0],):
            raise ValueError(
                f"CRDMemory: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and indices "
                f"{tuple(indices.shape)} must share the batch size"
            )
        if contrast_index is None:
            contrast_index = self.sample(indices, generator)
        elif contrast_index.ndim != 2 or contrast_index.shape[0] != student.shape[0]:
            raise ValueError(f"CRDMemory: contrast_index must be (B, K + 1), got {tuple(contrast_index.shape)}")
        contrast_index = contrast_index.to(self.memory_student.device)
        with autocast_off(self.memory_student.device.type):
            s = student.to(self.memory_student.dtype)
            t = teacher.to(self.memory_student.dtype)
            scores_student = self._scores(s, self.memory_teacher, contrast_index, self.z_student)
            scores_teacher = self._scores(t, self.memory_student, contrast_index, self.z_teacher)
            self.update(indices, s, t)
        return scores_student, scores_teacher


@fp32_compute
def nce_loss(scores: Tensor, *, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss of one side (the paper's Eq. 18 as in the official ``ContrastLoss``), ``scores`` ``(B, K + 1)``
    with the positive in column 0:
    ``-(1/B) sum_b [log(P_0 / (P_0 + K/N + eps)) + sum_{k>=1} log((K/N) / (P_k + K/N + eps))]``.
    """
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] == 0:
        raise ValueError(f"nce_loss: expected scores (B, K + 1) with K >= 1 negatives, got {tuple(scores.shape)}")
    if num_data < 1:
        raise ValueError(f"nce_loss: num_data must be >= 1, got {num_data}")
    noise = (scores.shape[1] - 1) / num_data  # K * P_n with the uniform noise P_n = 1/N
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


@fp32_compute
def crd(student: Tensor, teacher: Tensor, *, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD (Tian et al., ICLR 2020): ``L = nce(P^s) + nce(P^t)`` (:func:`nce_loss`).

    ``student``/``teacher`` are the two score tensors :class:`CRDMemory` returns (student anchor against the
    teacher bank, and the reverse), ``num_data`` the training set's size ``N``.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"crd: the two score tensors differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    return nce_loss(student, num_data=num_data, eps=eps) + nce_loss(teacher, num_data=num_data, eps=eps)


class Contrast(nn.Module):
    """The loss-side module of ``loss: crd``: both embedding heads (the teacher's is trained too), the memory bank
    (buffers: checkpointed and saved with the adapters) and the random stream of its negatives (its state too)."""

    def __init__(self, student_features: int, teacher_features: int, num_data: int, seed: int, dim: int = 128,
                 num_negatives: int = 16384, temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        self.embed_student = CRDEmbed(student_features, dim)
        self.embed_teacher = CRDEmbed(teacher_features, dim)
        bank_init = torch.Generator().manual_seed(seed)
        self.memory = CRDMemory(num_data, dim, num_negatives=num_negatives, temperature=temperature,
                                momentum=momentum, generator=bank_init)
        self.rng = RandomStream(seed + 1)


def _contrast(student: Any, teacher: Any, *, num_data: int, seed: int, dim: int = 128, num_negatives: int = 16384,
              temperature: float = 0.07, momentum: float = 0.5) -> Contrast:
    return Contrast(student.channels, teacher.channels, num_data, seed, dim, num_negatives, temperature, momentum)


@register_loss("crd", kind="relational", needs="vectors", module=_contrast, inputs=("index", "num_data", "seed"))
def crd_term(student: Tensor, teacher: Tensor, *, module: Contrast, index: Tensor, num_data: int,
             eps: float = 1e-7) -> Tensor:
    """CRD (Tian et al., ICLR 2020): ``L = nce(P^s) + nce(P^t)``, each embedding scored against the other model's
    memory bank at the batch's data-set index and ``K`` uniform negatives (:func:`crd`); the bank is updated after."""
    scores = module.memory(module.embed_student(student), module.embed_teacher(teacher), index,
                           generator=module.rng.generator())
    return crd(*scores, num_data=num_data, eps=eps)
