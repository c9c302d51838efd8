"""Attention transfer (``loss: at``) against the formula written out with loops, in float64, and both ways of
matching two grids (``grid: pool`` and ``grid: interpolate``) written out position by position."""

import math

import pytest
import torch

from kdgraph.losses import Needs, get_loss
from kdgraph.losses.attention import match_grids


def attention(x: list) -> list:
    """a = q / ||q||, q[j] = (1/C) sum_c x[c][j]^2 over the flattened grid, for one sample (C x H x W lists)."""
    channels = len(x)
    q = [sum(x[c][h][w] ** 2 for c in range(channels)) / channels
         for h in range(len(x[0])) for w in range(len(x[0][0]))]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def reference(s, t) -> float:
    """(1 / (B H W)) sum_b sum_j (a_s[b, j] - a_t[b, j])^2 for two tensors or nested lists (B x C x H x W)."""
    s = s.tolist() if isinstance(s, torch.Tensor) else s
    t = t.tolist() if isinstance(t, torch.Tensor) else t
    total, count = 0.0, 0
    for b in range(len(s)):
        a_s, a_t = attention(s[b]), attention(t[b])
        total += sum((u - v) ** 2 for u, v in zip(a_s, a_t))
        count += len(a_s)
    return total / count


def pooled(x: torch.Tensor, h: int, w: int) -> list:
    """Adaptive average pooling written out: output cell (i, j) averages input rows floor(i H / h) .. ceil((i + 1) H
    / h) - 1 and the same for columns, for every sample and channel."""
    H, W = x.shape[2], x.shape[3]
    out = []
    for sample in x.tolist():
        maps = []
        for plane in sample:
            rows = []
            for i in range(h):
                r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
                row = []
                for j in range(w):
                    c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
                    cells = [plane[r][c] for r in range(r0, r1) for c in range(c0, c1)]
                    row.append(sum(cells) / len(cells))
                rows.append(row)
            maps.append(rows)
        out.append(maps)
    return out


def bilinear(x: torch.Tensor, h: int, w: int) -> list:
    """Bilinear resizing with align_corners=False written out: output row i samples input row (i + 0.5) H / h - 0.5
    (clamped at 0), between its floor and the next row (the last row repeats at the edge); the same for columns."""
    H, W = x.shape[2], x.shape[3]

    def source(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        pos = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(pos)), n_in - 1)
        return lo, min(lo + 1, n_in - 1), pos - lo

    out = []
    for sample in x.tolist():
        maps = []
        for plane in sample:
            rows = []
            for i in range(h):
                r0, r1, fr = source(i, H, h)
                row = []
                for j in range(w):
                    c0, c1, fc = source(j, W, w)
                    top = (1 - fc) * plane[r0][c0] + fc * plane[r0][c1]
                    bottom = (1 - fc) * plane[r1][c0] + fc * plane[r1][c1]
                    row.append((1 - fr) * top + fr * bottom)
                rows.append(row)
            maps.append(rows)
        out.append(maps)
    return out


def test_at_is_registered_as_a_map_loss_that_matches_the_grids_itself():
    record = get_loss("at", ("feature", "relational"))
    assert record.needs is Needs.ANY and record.layouts == {"map"}
    assert record.params == {"p": 2.0, "grid": "pool"}  # RepDistiller's pooling by default (issue #33)


def test_at_matches_the_written_out_formula_with_different_widths():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 2, 2, 3, generator=g, dtype=torch.float64)  # 2 student channels
    t = torch.randn(3, 5, 2, 3, generator=g, dtype=torch.float64)  # 5 teacher channels, the same 2x3 grid
    got = get_loss("at").fn(s, t)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(reference(s, t), rel=1e-12)


def test_at_is_zero_for_maps_with_the_same_attention():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert get_loss("at").fn(x, torch.cat([x, x], dim=1) * 3).item() == pytest.approx(0.0, abs=1e-15)


def test_at_refuses_other_shapes_and_an_unknown_grid():
    fn = get_loss("at").fn
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) maps"):
        fn(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="one batch"):
        fn(torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3))
    with pytest.raises(ValueError, match="grid must be one of pool, interpolate, got 'bilinear'"):
        fn(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 6, 6), grid="bilinear")
    with pytest.raises(ValueError, match="grid must be one of"):  # refused even when the grids already agree
        fn(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), grid="upsample")


def test_pool_brings_the_larger_map_down_to_the_smaller_grid():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)  # the student's coarser map
    t = torch.randn(2, 5, 6, 6, generator=g, dtype=torch.float64)  # the teacher's finer one: 2x2 blocks averaged
    got = get_loss("at").fn(s, t)
    assert got.item() == pytest.approx(reference(s, pooled(t, 3, 3)), rel=1e-12)
    # the other way round (a student finer than its teacher) the student is pooled; 7 -> 3 is not a whole ratio
    s, t = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, 3, generator=g,
                                                                                  dtype=torch.float64)
    assert get_loss("at").fn(s, t).item() == pytest.approx(reference(pooled(s, 3, 3), pooled(t, 3, 3)), rel=1e-12)
    ms, mt = match_grids("at", s, t, "pool")
    assert ms.shape == (2, 3, 3, 3) and mt is t  # W: 5 -> 3 on the student, the teacher's 3x3 stays as it is


def test_interpolate_resizes_the_student_to_the_teachers_grid():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)
    got = get_loss("at").fn(s, t, grid="interpolate")
    assert got.item() == pytest.approx(reference(bilinear(s, 6, 7), t), rel=1e-12)
    big = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)  # a finer student is shrunk, not the teacher
    small = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    assert get_loss("at").fn(big, small, grid="interpolate").item() == pytest.approx(
        reference(bilinear(big, 4, 4), small), rel=1e-12)
    # the two ways differ: pooling the finer teacher is not interpolating the coarser student
    assert abs(got.item() - get_loss("at").fn(s, t).item()) > 1e-3


def test_equal_grids_are_left_alone_by_either_way():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 6, 4, 4, generator=g,
                                                                                  dtype=torch.float64)
    for grid in ("pool", "interpolate"):
        ms, mt = match_grids("at", s, t, grid)
        assert ms is s and mt is t
        assert get_loss("at").fn(s, t, grid=grid).item() == pytest.approx(reference(s, t), rel=1e-12)


def test_at_in_a_spec_pair_leaves_both_maps_to_the_loss_and_adds_no_projector(tmp_path):
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    def run(loss):
        spec = spec_from_dict({
            "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
            "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [8, 16, 16]}},
            "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
                     "test_subset": 32},
            "distill": {"pairs": [{"teacher": "layer3", "student": "block1", "loss": loss, "weight": 500}]},
            "train": {"epochs": 1},
            "runtime": {"device": "cpu"},
        })
        return train(spec, quiet=True, write=False)

    result = run("at")
    report = result.plan.pairs[0]
    assert report.student.shape == (8, 14, 14) and report.teacher.shape == (32, 7, 7)
    # no resize and no projector between the taps and the loss: the loss pools the student's 14x14 map to 7x7
    assert report.adapters.student_steps == [] and report.adapters.teacher_steps == []
    pooled_loss = result.metrics[0]["loss/pair:block1->layer3"]
    assert math.isfinite(pooled_loss)
    interpolated = run({"name": "at", "grid": "interpolate"}).metrics[0]["loss/pair:block1->layer3"]
    assert math.isfinite(interpolated) and interpolated != pooled_loss
