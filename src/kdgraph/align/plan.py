"""Plan the adapters that make a student feature comparable to a teacher feature.

:func:`plan_pair` takes the two probed shapes (no batch dim) and the user's
options and returns a :class:`PairPlan`: one module per side and a readable
list of what each does. The order is fixed:

1. ``pool`` on both sides (``gap`` / ``tokens-mean`` / ``cls``);
2. layout: the student is converted to the teacher's layout (tokens <-> map,
   dropping a class token where one side has it), then the student map is
   resized to the teacher's grid;
3. projector on the student (or, for ``prune``, channel selection on the teacher);
4. normaliser on both sides, one instance per side.

The teacher side never has trainable parameters. See ``docs/adapters.md``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from kdgraph.align.layout import (
    LAYOUTS,
    RESIZE_MODES,
    ClsToken,
    DropClsToken,
    GlobalAvgPool,
    MapToTokens,
    Resize,
    TokensToMap,
    token_grid,
)
from kdgraph.align.normalizers import build_normalizer, parse_normalizer
from kdgraph.align.projectors import build_projector, parse_projector
from kdgraph.align.prune import ChannelSelect
from kdgraph.errors import KdgraphError
from kdgraph.losses.registry import PAIR_KINDS, LossRecord, Needs, get_loss

__all__ = ["FeatureShape", "PairPlan", "AlignmentError", "plan_pair", "POOLS"]

POOLS = (None, "gap", "tokens-mean", "cls")
_NDIM = {"map": 3, "tokens": 2, "vector": 1}


class AlignmentError(KdgraphError, ValueError):
    """A student feature cannot be made comparable to a teacher feature with the given options (also a
    ``ValueError``).

    The message names both shapes, the reason, and what to try.
    """


@dataclass(frozen=True)
class FeatureShape:
    """A feature's shape without the batch dim and its layout.

    ``map`` is ``(C, H, W)``, ``tokens`` is ``(N, D)``, ``vector`` is ``(D,)``.
    """

    shape: tuple[int, ...]
    layout: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != _NDIM[self.layout] or any(s < 1 for s in shape):
            want = {"map": "(C, H, W)", "tokens": "(N, D)", "vector": "(D,)"}[self.layout]
            raise ValueError(f"a {self.layout} feature has shape {want} of positive sizes without the batch dim, got {tuple(self.shape)}")
        object.__setattr__(self, "shape", shape)

    @property
    def channels(self) -> int:
        """The feature dim: C of a map, D of tokens or a vector."""
        return self.shape[1] if self.layout == "tokens" else self.shape[0]

    def __str__(self) -> str:
        return f"{self.layout} {_fmt(self.shape)}"


@dataclass
class PairPlan:
    """What :func:`plan_pair` decided for one pair.

    ``student`` is trainable and saved apart from the student model;
    ``teacher`` has no trainable parameters. Both map a batched feature to
    ``(B, *out_shape)``. ``warnings`` say why a plan that works may still
    not be what the user meant (a student map blown up to the teacher's grid).
    """

    student_steps: list[str]
    teacher_steps: list[str]
    student: nn.Module
    teacher: nn.Module
    out_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        s = " → ".join(self.student_steps) or "as is"
        t = " → ".join(self.teacher_steps) or "as is"
        return f"student: {s}\nteacher: {t}\ncompared at: {_fmt(self.out_shape)}"


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


@dataclass
class _Side:
    shape: FeatureShape
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, module: nn.Module, step: str, new: FeatureShape) -> None:
        self.modules.append((key, module))
        self.steps.append(step)
        self.shape = new

    def build(self) -> nn.Sequential:
        return nn.Sequential(OrderedDict(self.modules))


def _pool(side: _Side, pool: str) -> None:
    fs = side.shape
    if fs.layout == "vector":
        return
    out = FeatureShape((fs.channels,), "vector")
    if fs.layout == "map":
        note = " (a map has no cls token)" if pool == "cls" else ""
        side.add("pool", GlobalAvgPool(), f"gap {_fmt(fs.shape)}→{_fmt(out.shape)}{note}", out)
    elif pool == "cls":
        side.add("pool", ClsToken(), f"cls token (token 0 of {fs.shape[0]})", out)
    else:
        side.add("pool", GlobalAvgPool(), f"mean over {fs.shape[0]} tokens", out)


def _resize_student(st: _Side, hw: tuple[int, int], mode: str) -> None:
    c, h, w = st.shape.shape
    if (h, w) == tuple(hw):
        return
    st.add("resize", Resize(hw, mode), f"resize {h}x{w}→{hw[0]}x{hw[1]} ({mode})", FeatureShape((c, *hw), "map"))
    if h * w == 1 or hw[0] > 2 * h or hw[1] > 2 * w:
        # a few student values spread over many teacher positions: the loss mostly compares interpolation
        what = "1x1 map (one value per channel)" if h * w == 1 else f"{h}x{w} map"
        st.warnings.append(f"the student's {what} is upsampled to the teacher's {hw[0]}x{hw[1]} grid, so most "
                           "teacher positions are compared with interpolated values; pool both sides (pool: gap) "
                           "or pair a student layer with a finer grid")


_LAYOUT_NAMES = {"map": "(C, H, W) maps", "tokens": "(N, D) tokens", "vector": "(D,) vectors"}


def _check_result(s: FeatureShape, t: FeatureShape, needs: Needs, fail: Any) -> None:
    """What the loss needs holds after the adapters (every step above should have made it so)."""
    if needs is Needs.SAME_SHAPE:
        ok = s == t
    elif needs is Needs.SAME_GRID:
        ch = 1 if t.layout == "tokens" else 0
        ok = s.layout == t.layout and s.shape[:ch] + s.shape[ch + 1:] == t.shape[:ch] + t.shape[ch + 1:]
    elif needs is Needs.VECTORS:
        ok = s.layout == t.layout == "vector"
    else:
        ok = True
    if not ok:
        raise fail(f"planned outputs still differ: student {s}, teacher {t}")


def plan_pair(
    student: FeatureShape,
    teacher: FeatureShape,
    *,
    projector: str | Mapping[str, Any] | None = "auto",
    normalize: str | Mapping[str, Any] | None = "none",
    pool: str | None = None,
    resize: str = "bilinear",
    prune_indices: torch.Tensor | None = None,
    loss: LossRecord | str | None = None,
) -> PairPlan:
    """Choose the adapters for one student/teacher feature pair.

    ``loss`` (a record or a pair-loss name; None: any same-shape loss) says what the loss needs
    (:class:`kdgraph.losses.Needs`) and which layouts it accepts. Raises :class:`AlignmentError` when the shapes
    cannot be aligned with these options; the message says what to try.
    """
    record = loss if isinstance(loss, LossRecord) else get_loss(loss, PAIR_KINDS) if loss is not None else None
    needs = record.needs if record is not None else Needs.SAME_SHAPE

    def fail(why: str, hint: str | None = None) -> AlignmentError:
        msg = f"cannot align student {student} with teacher {teacher}: {why}"
        return AlignmentError(msg + (f"; try {hint}" if hint else ""))

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

    st, te = _Side(student), _Side(teacher)

    # 1. pool both sides (a loss that needs vectors pools with gap when no pool was set)
    if pool is None and needs is Needs.VECTORS:
        pool = "gap"
    if pool is not None:
        _pool(st, pool)
        _pool(te, pool)

    # 2. layout: bring the student to the teacher's layout and grid (a loss that takes any shapes: nothing)
    s, t = st.shape, te.shape
    if needs is Needs.ANY:
        pass
    elif (s.layout == "vector") != (t.layout == "vector"):
        other = s if t.layout == "vector" else t
        hint = "pool: gap" if other.layout == "map" else "pool: gap (mean over tokens) or pool: cls"
        raise fail(f"one side is a vector and the other a {other.layout}, and no pool was set to reduce it", hint)
    elif s.layout == "map" and t.layout == "map":
        _resize_student(st, t.shape[1:], resize)
    elif s.layout == "tokens" and t.layout == "map":
        g = token_grid(s.shape[0])
        if g is None:
            raise fail(
                f"{s.shape[0]} student tokens form no square grid (nor a square grid plus a cls token), "
                "so they cannot be reshaped to a map",
                "pool: gap",
            )
        side, cls = g
        st.add(
            "layout",
            TokensToMap(side, drop_cls=cls),
            f"tokens→map {s.shape[0]} tokens→{side}x{side}" + (" (drop cls token)" if cls else ""),
            FeatureShape((s.channels, side, side), "map"),
        )
        _resize_student(st, t.shape[1:], resize)
    elif s.layout == "map" and t.layout == "tokens":
        g = token_grid(t.shape[0])
        if g is None:
            raise fail(
                f"{t.shape[0]} teacher tokens form no square grid (nor a square grid plus a cls token), "
                "so the student map cannot be laid out like them",
                "pool: gap",
            )
        side, cls = g
        if cls:
            te.add("layout", DropClsToken(), "drop cls token", FeatureShape((side * side, t.channels), "tokens"))
        _resize_student(st, (side, side), resize)
        st.add(
            "layout",
            MapToTokens(),
            f"map→tokens {side}x{side}→{side * side} tokens",
            FeatureShape((side * side, s.channels), "tokens"),
        )
    elif s.layout == "tokens" and t.layout == "tokens" and s.shape[0] != t.shape[0]:
        gs, gt = token_grid(s.shape[0]), token_grid(t.shape[0])
        if gs is None or gt is None:
            which = "student" if gs is None else "teacher"
            n = s.shape[0] if gs is None else t.shape[0]
            raise fail(
                f"token counts differ and the {n} {which} tokens form no square grid "
                "(nor a square grid plus a cls token) to resize",
                "pool: gap (mean over tokens) or pool: cls",
            )
        (side_s, cls_s), (side_t, cls_t) = gs, gt
        n_t = side_t * side_t
        if cls_t:
            te.add("layout", DropClsToken(), "drop cls token", FeatureShape((n_t, t.channels), "tokens"))
        if side_s == side_t:  # differ only by a cls token
            if cls_s:
                st.add("layout", DropClsToken(), "drop cls token", FeatureShape((n_t, s.channels), "tokens"))
        else:
            st.add(
                "to_map",
                TokensToMap(side_s, drop_cls=cls_s),
                f"tokens→map {s.shape[0]} tokens→{side_s}x{side_s}" + (" (drop cls token)" if cls_s else ""),
                FeatureShape((s.channels, side_s, side_s), "map"),
            )
            _resize_student(st, (side_t, side_t), resize)
            st.add(
                "layout",
                MapToTokens(),
                f"map→tokens {side_t}x{side_t}→{n_t} tokens",
                FeatureShape((n_t, s.channels), "tokens"),
            )

    # 3. projector (student) or channel selection (teacher)
    s, t = st.shape, te.shape
    layout = t.layout if needs is not Needs.ANY else s.layout
    if proj_name == "prune":
        if prune_indices is None:
            raise fail(
                "projector: prune needs prune_indices (the kept teacher filters)",
                "computing them with kdgraph.align.prune.l1_channel_mask(conv.weight, keep=student channels)",
            )
        idx = torch.as_tensor(prune_indices).detach().flatten().to(torch.long)
        if s.channels > t.channels:
            raise fail(
                f"pruning keeps a subset of the teacher's {t.channels} channels, fewer than the student's {s.channels}",
                "a projector (projector: auto) instead of prune",
            )
        if idx.numel() != s.channels:
            raise fail(
                f"prune_indices keep {idx.numel()} teacher channels but the student has {s.channels}",
                f"l1_channel_mask(..., keep={s.channels})",
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.channels):
            raise fail(f"prune_indices must lie in 0..{t.channels - 1}", "indices from l1_channel_mask on the producing conv")
        if torch.unique(idx).numel() != idx.numel():
            raise fail("prune_indices contain duplicates", "indices from l1_channel_mask")
        new = list(t.shape)
        new[1 if layout == "tokens" else 0] = idx.numel()
        te.add(
            "prune",
            ChannelSelect(idx, dim=-1 if layout == "tokens" else 1),
            f"select {idx.numel()} of {t.channels} channels (pruned filters)",
            FeatureShape(tuple(new), layout),
        )
    elif needs is not Needs.SAME_SHAPE and proj_name in ("auto", "none"):
        pass  # the loss compares features of any width (its record says so): no projector
    else:
        try:
            mod, step = build_projector(projector, layout, s.channels, t.channels)
        except ValueError as e:
            raise fail(str(e)) from None
        if mod is not None:
            new = list(s.shape)
            new[1 if layout == "tokens" else 0] = t.channels
            st.add("proj", mod, step, FeatureShape(tuple(new), layout))

    # 4. normaliser, one instance per side
    for side in (st, te):
        mod, step = build_normalizer(normalize, side.shape.layout, side.shape.channels)
        if mod is not None:
            side.add("norm", mod, step, side.shape)

    _check_result(st.shape, te.shape, needs, fail)
    if record is not None:
        for which, side in (("student", st.shape), ("teacher", te.shape)):
            if side.layout not in record.layouts:
                want = " or ".join(f"{_LAYOUT_NAMES[layout]}" for layout in sorted(record.layouts))
                raise fail(f"loss {record.name!r} compares {want}, but the {which} side is {side} after the adapters",
                           "pool: gap" if "vector" in record.layouts else "a pair of (C, H, W) maps")
    return PairPlan(
        student_steps=st.steps,
        teacher_steps=te.steps,
        student=st.build(),
        teacher=te.build(),
        out_shape=te.shape.shape,
        warnings=st.warnings,
    )
