"""DistillGraph: frozen teacher extractor, student extractor, per-pair adapters and loss terms in one module.

``forward(x, y)`` is the whole differentiable part of a training step; it returns every loss term unweighted
(for metrics) and the weighted total (for backward). Losses know only tensors; this module only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.graph.loss_modules import step_inputs
from kdgraph.graph.terms import Term, TermKind
from kdgraph.losses import cross_entropy, feature_distance, soft_cross_entropy
from kdgraph.losses.standardise import standardise

__all__ = ["DistillGraph", "StepOutput"]


@dataclass
class StepOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


class DistillGraph(nn.Module):
    """Teachers (frozen, always in eval mode, never receive gradients), student and adapters in one module.

    ``student`` and every teacher are extractors returning ``{tap: tensor, "output": logits}``; ``student_adapters``
    and ``teacher_adapters`` hold each term's modules under its ``Term.adapter`` key (a pair's adapters, a
    ModuleList of them for a pair over several taps, a self-distillation head); ``loss_modules`` the loss-side
    modules of the records that have one, under the same key. ``embedding`` names the student tap that k-NN /
    linear-probe evaluation reads; ``num_data`` is the training set's size (a run input of some losses).
    ``set_epoch(epoch)`` applies every term's warm-up (a non-persistent buffer ``scales``, one factor per term).
    """

    def __init__(self, student: nn.Module, teachers: dict[str, nn.Module], student_adapters: nn.ModuleDict,
                 teacher_adapters: nn.ModuleDict, terms: list[Term], embedding: str = "output",
                 loss_modules: Optional[nn.ModuleDict] = None, num_data: Optional[int] = None,
                 inputs: Optional[dict[str, nn.Module]] = None):
        super().__init__()
        self.inputs = dict(inputs or {})  # each teacher's InputAdapter (also inside its FrozenTeacher); not trained
        self.student = student
        self.student_adapters = student_adapters
        self.teacher_adapters = teacher_adapters
        self.loss_modules = loss_modules if loss_modules is not None else nn.ModuleDict()
        self.terms = terms
        self.embedding = embedding
        self.num_data = num_data
        self.register_buffer("scales", torch.tensor([t.warmup(0) for t in terms]), persistent=False)
        self.active: Optional[frozenset[str]] = None  # labels of the active terms (curriculum); None: all
        # Kept out of the module tree so teachers never appear in the trainable state or an optimizer.
        self._teachers = [dict(teachers)]
        for teacher in teachers.values():
            teacher.eval()
            teacher.requires_grad_(False)

    @property
    def teachers(self) -> dict[str, nn.Module]:
        return self._teachers[0]

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The first (usually only) teacher."""
        return next(iter(self.teachers.values()), None)

    def train(self, mode: bool = True) -> "DistillGraph":
        super().train(mode)
        for teacher in self.teachers.values():
            teacher.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> "DistillGraph":
        super().to(*args, **kwargs)
        for teacher in self.teachers.values():
            if getattr(teacher, "sharded", False):  # FSDP placed its shards; only its input conversion moves
                if teacher.input is not None:
                    teacher.input.to(*args, **kwargs)
                continue
            teacher.to(*args, **kwargs)
        return self

    def teacher_features(self, x: torch.Tensor,
                         cached: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> dict[str, dict[str, torch.Tensor]]:
        """Every teacher's taps by teacher name; ``cached`` outputs (``teacher.cache``) replace a forward."""
        cached = cached or {}
        with torch.no_grad():
            return {name: cached[name] if name in cached else teacher(x) for name, teacher in self.teachers.items()}

    def set_epoch(self, epoch: int) -> None:
        """Every term's warm-up factor for 0-based ``epoch`` (``Term.warmup``), in place."""
        with torch.no_grad():
            self.scales.copy_(torch.tensor([t.warmup(epoch) for t in self.terms], dtype=self.scales.dtype))

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_teacher: Optional[torch.Tensor] = None,
                cached: Optional[dict[str, dict[str, torch.Tensor]]] = None,
                index: Optional[torch.Tensor] = None) -> StepOutput:
        """Every loss term for a batch; teachers see ``x_teacher`` when given (independent views), else ``x``.

        ``y`` is class indices ``(B,)`` or soft targets ``(B, K)`` (mixup/cutmix); ``index`` the batch's positions in
        the training set (for a loss that takes them)."""
        feats_t = self.teacher_features(x if x_teacher is None else x_teacher, cached)
        feats_s = self.student(x)
        logits = feats_s["output"]
        terms: dict[str, torch.Tensor] = {}
        heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        for i, term in enumerate(self.terms):
            if self.active is not None and not term.kind.is_head and term.label not in self.active:
                continue
            if term.kind.is_head:
                if self.active is not None:
                    continue
                if term.adapter not in heads:
                    heads[term.adapter] = self.student_adapters[term.adapter](feats_s[term.student_tap])
                value = self._head_term(term, heads[term.adapter], logits, feats_s, y)
            elif term.kind is TermKind.CE:
                value = cross_entropy(logits, y)
            elif term.kind is TermKind.LOGITS:
                value = self._logits_term(term, logits, feats_t[term.teacher_name]["output"].detach(), y, index)
            else:
                value = self._pair_term(term, feats_s, feats_t[term.teacher_name], y, index)
            terms[term.label] = value.detach()
            total = total + term.weight * self.scales[i] * value
        return StepOutput(total=total, terms=terms, logits=logits.detach())

    def _logits_term(self, term: Term, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                     index: Optional[torch.Tensor]) -> torch.Tensor:
        if term.standardise:
            s, t = standardise(s), standardise(t)
        return term.fn(s, t, **term.params, **step_inputs(term.record, y, index, self.num_data))

    def _pair_term(self, term: Term, feats_s: dict[str, torch.Tensor], feats_t: dict[str, torch.Tensor],
                   y: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """A pair (or a pair's objective): each tap through its adapters, then the loss with its module and inputs
        (losses compute fp16/bf16 in float32)."""
        s_adapt, t_adapt = self.student_adapters[term.adapter], self.teacher_adapters[term.adapter]
        if term.record.several:
            s = [a(feats_s[tap]) for a, tap in zip(s_adapt, term.student_taps)]
            t = [a(feats_t[tap].detach()) for a, tap in zip(t_adapt, term.teacher_taps)]
        else:
            s, t = s_adapt(feats_s[term.student_tap]), t_adapt(feats_t[term.teacher_tap].detach())
        module = self.loss_modules[term.adapter] if term.record.module is not None else None
        if term.kind is TermKind.OBJECTIVE:
            return module.objective(s, t)
        tensors = (*s, *t) if term.record.spread else (s, t)
        extra = {"module": module} if module is not None else {}
        return term.fn(*tensors, **term.params, **extra, **step_inputs(term.record, y, index, self.num_data))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The student's embedding of ``x``, flattened to ``(B, D)`` (for k-NN and linear probes)."""
        return self.student(x)[self.embedding].flatten(1)

    def _head_term(self, term: Term, head: tuple[torch.Tensor, torch.Tensor], logits: torch.Tensor,
                   feats: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Self-distillation terms of one auxiliary head; the deepest outputs are targets (detached)."""
        q, h = head
        if term.kind is TermKind.HEAD_SOFT:
            return soft_cross_entropy(q, logits.detach(), **term.params)
        if term.kind is TermKind.HEAD_CE:
            return cross_entropy(q, y)
        adapt = self.student_adapters[term.adapter].adapt
        return feature_distance(adapt(h), feats[term.teacher_tap].detach().flatten(1))

    def head_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of the deepest classifier (``output``) and of every auxiliary head (for evaluation)."""
        feats = self.student(x)
        out = {"output": feats["output"]}
        for term in self.terms:
            if term.kind is TermKind.HEAD_CE:
                out[term.student_tap] = self.student_adapters[term.adapter](feats[term.student_tap])[0]
        return out
