"""Align one student feature with one teacher feature: :func:`align_pair` runs the four steps of
:mod:`kdgraph.align.steps` (pool, layout, project, normalise) and returns the :class:`PairAdapters`.

The student side may be trainable (a projector) and is saved apart from the student model; the teacher side never
has trainable parameters. What the pair's loss needs comes from its record (``kdgraph.losses``). See
``docs/adapters.md`` for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import nn

from kdgraph.align import steps
from kdgraph.align.layout import RESIZE_MODES, FeatureShape, fmt_shape
from kdgraph.align.normalizers import parse_normalizer
from kdgraph.align.projectors import parse_projector
from kdgraph.errors import KdgraphError
from kdgraph.losses.registry import PAIR_KINDS, LossRecord, Needs, get_loss

__all__ = ["FeatureShape", "PairAdapters", "AlignmentError", "align_pair", "POOLS"]

POOLS = (None, "gap", "tokens-mean", "cls")
_LAYOUT_NAMES = {"map": "(C, H, W) maps", "tokens": "(N, D) tokens", "vector": "(D,) vectors"}


class AlignmentError(KdgraphError, ValueError):
    """A student feature cannot be made comparable to a teacher feature with the given options (also a
    ``ValueError``).

    The message names both shapes, the reason, and what to try.
    """


@dataclass
class PairAdapters:
    """What :func:`align_pair` put between one pair's tapped features and its loss.

    ``student`` is trainable and saved apart from the student model; ``teacher`` has no trainable parameters. Both
    map a batched feature to ``(B, *out_shape)`` (the student's width may differ where the loss allows it).
    ``warnings`` say why adapters that work may still not be what the user meant (a student map blown up to the
    teacher's grid).
    """

    student_steps: list[str]
    teacher_steps: list[str]
    student: nn.Module
    teacher: nn.Module
    out_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    student_out: Optional[FeatureShape] = None
    """The student side's output (its width may differ from the teacher's where the loss allows it)."""
    teacher_out: Optional[FeatureShape] = None
    """The teacher side's output (``out_shape`` with its layout)."""

    def describe(self) -> str:
        s = " → ".join(self.student_steps) or "as is"
        t = " → ".join(self.teacher_steps) or "as is"
        return f"student: {s}\nteacher: {t}\ncompared at: {fmt_shape(self.out_shape)}"


def _loss_record(loss: LossRecord | str | None) -> Optional[LossRecord]:
    if loss is None or isinstance(loss, LossRecord):
        return loss
    return get_loss(loss, PAIR_KINDS)


def _check_result(s: FeatureShape, t: FeatureShape, record: Optional[LossRecord], fail: Any) -> None:
    """What the loss needs holds after the adapters (the steps should have made it so), in layouts it takes."""
    needs = record.needs if record is not None else Needs.SAME_SHAPE
    ch = 1 if t.layout == "tokens" else 0
    ok = {Needs.SAME_SHAPE: s == t,
          Needs.SAME_GRID: s.layout == t.layout and s.shape[:ch] + s.shape[ch + 1:] == t.shape[:ch] + t.shape[ch + 1:],
          Needs.SAME_WIDTH: s.layout == t.layout and s.shape[ch] == t.shape[ch],
          Needs.VECTORS: s.layout == t.layout == "vector",
          Needs.ANY: True}[needs]
    if not ok:
        raise fail(f"planned outputs still differ: student {s}, teacher {t}")
    for which, side in (("student", s), ("teacher", t)):
        if record is not None and side.layout not in record.layouts:
            want = " or ".join(_LAYOUT_NAMES[name] for name in sorted(record.layouts))
            raise fail(f"loss {record.name!r} compares {want}, but the {which} side is {side} after the adapters",
                       "pool: gap" if "vector" in record.layouts else "a pair of (C, H, W) maps")


def align_pair(
    student: FeatureShape,
    teacher: FeatureShape,
    *,
    projector: str | Mapping[str, Any] | None = "auto",
    normalize: str | Mapping[str, Any] | None = "none",
    pool: str | None = None,
    resize: str = "bilinear",
    prune_indices: torch.Tensor | None = None,
    loss: LossRecord | str | None = None,
) -> PairAdapters:
    """Choose the adapters for one student/teacher feature pair.

    ``loss`` (a record or a pair-loss name; None: a same-shape loss taking any layout) says what the loss needs
    (:class:`kdgraph.losses.Needs`) and which layouts it takes. Raises :class:`AlignmentError` when the shapes
    cannot be aligned with these options; the message says what to try.
    """

    def fail(why: str, hint: str | None = None) -> AlignmentError:
        msg = f"cannot align student {student} with teacher {teacher}: {why}"
        return AlignmentError(msg + (f"; try {hint}" if hint else ""))

    record = _loss_record(loss)
    needs = record.needs if record is not None else Needs.SAME_SHAPE
    if pool not in POOLS:
        raise fail(f"pool {pool!r} is not one of gap, tokens-mean, cls (or none)", "pool: gap")
    if resize not in RESIZE_MODES:
        raise fail(f"resize {resize!r} is not one of {', '.join(RESIZE_MODES)}", "resize: bilinear")
    try:
        proj_name, _ = parse_projector(projector)
        parse_normalizer(normalize)
    except ValueError as e:
        raise fail(str(e)) from None
    if prune_indices is not None and proj_name != "prune":
        raise fail(f"prune_indices were given but projector is {proj_name!r}", "projector: prune, or drop the indices")

    st, te = steps.Side(student), steps.Side(teacher)
    steps.pool(st, te, pool, needs)
    steps.layout(st, te, resize, needs, fail)
    steps.project(st, te, proj_name, projector, prune_indices, needs, fail)
    steps.normalise(st, te, normalize)
    _check_result(st.shape, te.shape, record, fail)
    return PairAdapters(student_steps=st.steps, teacher_steps=te.steps, student=st.build(), teacher=te.build(),
                        out_shape=te.shape.shape, warnings=st.warnings, student_out=st.shape, teacher_out=te.shape)
