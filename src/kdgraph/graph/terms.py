"""The terms of a DistillGraph's loss: what each kind of term compares, and where its adapters are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

import torch

from kdgraph.losses import LossRecord

__all__ = ["TermKind", "Term", "adapter_key", "legacy_adapter_renames"]


class TermKind(str, Enum):
    """What a term compares. A ``str`` enum: ``TermKind.PAIR == "pair"``."""

    CE = "ce"
    """Cross-entropy of the student's logits on the labels (or on mixed soft targets); never switched off by stages."""
    LOGITS = "logits"
    """A logit loss (its record's ``fn``) between the student's and a teacher's logits."""
    PAIR = "pair"
    """A pair loss between a student and a teacher feature, each through the pair's adapters."""
    HEAD_SOFT = "head_soft"
    """Self-distillation: soft cross-entropy of an auxiliary head's logits to the deepest logits (detached)."""
    HEAD_CE = "head_ce"
    """Self-distillation: cross-entropy of an auxiliary head's logits on the labels."""
    HEAD_FEATURE = "head_feature"
    """Self-distillation: ``||W h - sg(h_deep)||`` between a head's pooled feature and the deepest feature."""
    OBJECTIVE = "objective"
    """A pair's loss module trained on its own objective (``module.objective(s, t)``: FT's paraphraser reconstructing
    the teacher's map); only in the stages that name it (``train.stages[].objectives``)."""

    @property
    def is_head(self) -> bool:
        return self in (TermKind.HEAD_SOFT, TermKind.HEAD_CE, TermKind.HEAD_FEATURE)


def adapter_key(label: str) -> str:
    """The key of a term's adapters in ``student_adapters`` / ``teacher_adapters`` and in ``adapters.safetensors``:
    its label (``pair:block3->layer3``, ``head:block1``), with the dots of module paths written as underscores (a
    module's name cannot hold a dot)."""
    return label.replace(".", "_")


@dataclass
class Term:
    """One weighted loss term.

    ``adapter`` keys the term's modules in the graph's adapter dicts (pairs: their adapters; heads: the auxiliary
    head, shared by a head's three terms); ``index`` is where the term comes from in the spec (``distill.pairs[i]``,
    ``self_distill.heads[i]``), for messages; ``record`` is the loss record behind ``fn`` (logits and pair terms).
    A pair over several taps per model lists them in ``student_taps`` / ``teacher_taps`` (``student_tap`` and
    ``teacher_tap`` are the first). ``warmup_epochs`` scales the term by ``min(epoch / warmup_epochs, 1)`` (epochs
    from 1); ``standardise`` z-scores both logit tensors first (logits term).
    """

    label: str
    kind: TermKind
    weight: float
    fn: Optional[Callable[..., torch.Tensor]] = None
    params: dict[str, Any] = field(default_factory=dict)
    student_tap: Optional[str] = None
    teacher_tap: Optional[str] = None
    index: int = -1
    teacher_name: Optional[str] = None
    record: Optional[LossRecord] = None
    adapter: Optional[str] = None
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    warmup_epochs: float = 0.0
    standardise: bool = False

    def __post_init__(self) -> None:
        self.kind = TermKind(self.kind)
        if not self.student_taps and self.student_tap is not None:
            self.student_taps = (self.student_tap,)
        if not self.teacher_taps and self.teacher_tap is not None:
            self.teacher_taps = (self.teacher_tap,)
        if self.student_taps and self.student_tap is None:
            self.student_tap, self.teacher_tap = self.student_taps[0], self.teacher_taps[0]

    def warmup(self, epoch: int) -> float:
        """The factor of this term in 0-based ``epoch``: ``min((epoch + 1) / warmup_epochs, 1)``, 1 without warm-up."""
        return 1.0 if self.warmup_epochs <= 0 else min((epoch + 1) / self.warmup_epochs, 1.0)


def legacy_adapter_renames(terms: list[Term], prefix: str = "adapters") -> dict[str, str]:
    """``{"adapters.student.0.": "adapters.student.pair:block3->layer3.", ...}``: the names checkpoints written before
    adapters were keyed by label used (a pair's index, ``headN``), mapped to today's keys, for resuming them."""
    renames = {}
    for term in terms:
        if term.adapter is None or term.index < 0:
            continue
        old = f"head{term.index}" if term.kind.is_head else str(term.index)
        for side in ("student", "teacher"):
            renames[f"{prefix}.{side}.{old}."] = f"{prefix}.{side}.{term.adapter}."
    return renames
