"""The four steps of aligning a pair, in the order :func:`kdgraph.align.align_pair` runs them (docs/adapters.md):

1. :func:`pool` both sides (``gap`` / ``tokens-mean`` / ``cls``);
2. :func:`layout`: the student is converted to the teacher's layout (tokens <-> map, dropping a class token where one
   side has it), then the student map is resized to the teacher's grid;
3. :func:`project`: a projector on the student (or, for ``prune``, channel selection on the teacher);
4. :func:`normalise` both sides, one instance per side.

Each step adds modules to the two :class:`Side` objects and moves their shapes on; what the loss needs (its record's
``needs``) decides which steps act. ``fail(why, hint)`` makes the error naming both original shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from kdgraph.align.layout import (ClsToken, DropClsToken, FeatureShape, GlobalAvgPool, MapToTokens, Resize,
                                  TokensToMap, fmt_shape, token_grid)
from kdgraph.align.normalizers import build_normalizer
from kdgraph.align.projectors import build_projector
from kdgraph.align.prune import ChannelSelect
from kdgraph.losses.registry import Needs

__all__ = ["Side", "pool", "layout", "project", "normalise"]

Fail = Callable[..., Exception]


@dataclass
class Side:
    """One side of a pair while it is being aligned: its current shape and the modules and steps so far."""

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


# 1. pool ---------------------------------------------------------------------------------------------------------
def _pool_side(side: Side, how: str) -> None:
    fs = side.shape
    if fs.layout == "vector":
        return
    out = FeatureShape((fs.channels,), "vector")
    if fs.layout == "map":
        note = " (a map has no cls token)" if how == "cls" else ""
        side.add("pool", GlobalAvgPool(), f"gap {fmt_shape(fs.shape)}→{fmt_shape(out.shape)}{note}", out)
    elif how == "cls":
        side.add("pool", ClsToken(), f"cls token (token 0 of {fs.shape[0]})", out)
    else:
        side.add("pool", GlobalAvgPool(), f"mean over {fs.shape[0]} tokens", out)


def pool(st: Side, te: Side, how: Optional[str], needs: Needs) -> None:
    """Reduce both sides to vectors with ``how``; a loss that needs vectors gets ``gap`` when none was set."""
    if how is None and needs is Needs.VECTORS:
        how = "gap"
    if how is not None:
        _pool_side(st, how)
        _pool_side(te, how)


# 2. layout -------------------------------------------------------------------------------------------------------
def _resize_student(st: Side, hw: tuple[int, int], mode: str) -> None:
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


def _grid(n: int, fail: Fail, who: str, then: str, hint: str) -> tuple[int, bool]:
    """``(side, has_cls)`` of ``n`` tokens, or the failure "``who`` form no square grid ...``then``"."""
    found = token_grid(n)
    if found is None:
        raise fail(f"{who} form no square grid (nor a square grid plus a cls token){then}", hint)
    return found


def _to_map(st: Side, side: int, cls: bool, key: str = "layout") -> None:
    s = st.shape
    st.add(key, TokensToMap(side, drop_cls=cls), f"tokens→map {s.shape[0]} tokens→{side}x{side}"
           + (" (drop cls token)" if cls else ""), FeatureShape((s.channels, side, side), "map"))


def _to_tokens(st: Side, side: int) -> None:
    st.add("layout", MapToTokens(), f"map→tokens {side}x{side}→{side * side} tokens",
           FeatureShape((side * side, st.shape.channels), "tokens"))


def _drop_cls(side: Side, n: int) -> None:
    side.add("layout", DropClsToken(), "drop cls token", FeatureShape((n, side.shape.channels), "tokens"))


def layout(st: Side, te: Side, resize: str, needs: Needs, fail: Fail) -> None:
    """Bring the student to the teacher's layout and grid; nothing for a loss that takes any shapes."""
    s, t = st.shape, te.shape
    if needs is Needs.ANY:
        return
    if (s.layout == "vector") != (t.layout == "vector"):
        other = s if t.layout == "vector" else t
        hint = "pool: gap" if other.layout == "map" else "pool: gap (mean over tokens) or pool: cls"
        raise fail(f"one side is a vector and the other a {other.layout}, and no pool was set to reduce it", hint)
    if needs is Needs.SAME_WIDTH:  # any grid: only the layouts must agree
        if s.layout != t.layout:
            raise fail(f"the loss compares two {t.layout}s of any grid, but the student is a {s.layout}", "pool: gap")
        return
    if s.layout == "map" and t.layout == "map":
        _resize_student(st, t.shape[1:], resize)
    elif s.layout == "tokens" and t.layout == "map":
        side, cls = _grid(s.shape[0], fail, f"{s.shape[0]} student tokens", ", so they cannot be reshaped to a map",
                          "pool: gap")
        _to_map(st, side, cls)
        _resize_student(st, t.shape[1:], resize)
    elif s.layout == "map" and t.layout == "tokens":
        side, cls = _grid(t.shape[0], fail, f"{t.shape[0]} teacher tokens",
                          ", so the student map cannot be laid out like them", "pool: gap")
        if cls:
            _drop_cls(te, side * side)
        _resize_student(st, (side, side), resize)
        _to_tokens(st, side)
    elif s.layout == "tokens" and t.layout == "tokens" and s.shape[0] != t.shape[0]:
        hint = "pool: gap (mean over tokens) or pool: cls"
        side_s, cls_s = _grid(s.shape[0], fail, f"token counts differ and the {s.shape[0]} student tokens",
                              " to resize", hint)
        side_t, cls_t = _grid(t.shape[0], fail, f"token counts differ and the {t.shape[0]} teacher tokens",
                              " to resize", hint)
        if cls_t:
            _drop_cls(te, side_t * side_t)
        if side_s == side_t:  # differ only by a cls token
            if cls_s:
                _drop_cls(st, side_t * side_t)
        else:
            _to_map(st, side_s, cls_s, key="to_map")
            _resize_student(st, (side_t, side_t), resize)
            _to_tokens(st, side_t)


# 3. project ------------------------------------------------------------------------------------------------------
def _prune(st: Side, te: Side, prune_indices: Optional[torch.Tensor], fail: Fail) -> None:
    s, t = st.shape, te.shape
    if prune_indices is None:
        raise fail("projector: prune needs prune_indices (the kept teacher filters)",
                   "computing them with kdgraph.align.prune.l1_channel_mask(conv.weight, keep=student channels)")
    idx = torch.as_tensor(prune_indices).detach().flatten().to(torch.long)
    if s.channels > t.channels:
        raise fail(f"pruning keeps a subset of the teacher's {t.channels} channels, fewer than the student's "
                   f"{s.channels}", "a projector (projector: auto) instead of prune")
    if idx.numel() != s.channels:
        raise fail(f"prune_indices keep {idx.numel()} teacher channels but the student has {s.channels}",
                   f"l1_channel_mask(..., keep={s.channels})")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.channels):
        raise fail(f"prune_indices must lie in 0..{t.channels - 1}", "indices from l1_channel_mask on the producing conv")
    if torch.unique(idx).numel() != idx.numel():
        raise fail("prune_indices contain duplicates", "indices from l1_channel_mask")
    dim = 1 if t.layout == "tokens" else 0
    new = list(t.shape)
    new[dim] = idx.numel()
    te.add("prune", ChannelSelect(idx, dim=-1 if t.layout == "tokens" else 1),
           f"select {idx.numel()} of {t.channels} channels (pruned filters)", FeatureShape(tuple(new), t.layout))


def project(st: Side, te: Side, name: str, projector: Any, prune_indices: Optional[torch.Tensor], needs: Needs,
            fail: Fail) -> None:
    """A projector from the student's width to the teacher's (``prune``: select teacher channels instead). Under
    ``auto``/``none`` a loss whose record takes any width gets none."""
    if name == "prune":
        _prune(st, te, prune_indices, fail)
        return
    if needs not in (Needs.SAME_SHAPE, Needs.SAME_WIDTH) and name in ("auto", "none"):
        return  # the loss compares features of any width (its record says so)
    s, t = st.shape, te.shape
    where = s.layout if needs is Needs.ANY else t.layout  # ANY kept each side's own layout
    try:
        mod, step = build_projector(projector, where, s.channels, t.channels)
    except ValueError as e:
        raise fail(str(e)) from None
    if mod is not None:
        new = list(s.shape)
        new[1 if where == "tokens" else 0] = t.channels
        st.add("proj", mod, step, FeatureShape(tuple(new), where))


# 4. normalise ----------------------------------------------------------------------------------------------------
def normalise(st: Side, te: Side, normalize: Any) -> None:
    """The normaliser on both sides, one instance per side (they must not share batch statistics)."""
    for side in (st, te):
        mod, step = build_normalizer(normalize, side.shape.layout, side.shape.channels)
        if mod is not None:
            side.add("norm", mod, step, side.shape)
