"""Attention transfer (``loss: at``) against the formula written out with loops, in float64."""

import math

import pytest
import torch

from kdgraph.losses import Needs, get_loss


def attention(x: list) -> list:
    """a = q / ||q||, q[j] = (1/C) sum_c x[c][j]^2 over the flattened grid, for one sample (C x H x W lists)."""
    channels = len(x)
    q = [sum(x[c][h][w] ** 2 for c in range(channels)) / channels
         for h in range(len(x[0])) for w in range(len(x[0][0]))]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def reference(s: torch.Tensor, t: torch.Tensor) -> float:
    """(1 / (B H W)) sum_b sum_j (a_s[b, j] - a_t[b, j])^2."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        a_s, a_t = attention(s[b].tolist()), attention(t[b].tolist())
        total += sum((u - v) ** 2 for u, v in zip(a_s, a_t))
        count += len(a_s)
    return total / count


def test_at_is_registered_as_a_same_grid_map_loss():
    record = get_loss("at", ("feature", "relational"))
    assert record.needs is Needs.SAME_GRID and record.layouts == {"map"} and record.params == {"p": 2.0}


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


def test_at_refuses_other_shapes():
    fn = get_loss("at").fn
    with pytest.raises(ValueError, match="grid"):
        fn(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) maps"):
        fn(torch.randn(2, 4), torch.randn(2, 4))


def test_at_in_a_spec_pair_resizes_the_student_and_adds_no_projector(tmp_path):
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    spec = spec_from_dict({
        "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
        "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [8, 16, 16]}},
        "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
                 "test_subset": 32},
        "distill": {"pairs": [{"teacher": "layer3", "student": "block1", "loss": "at", "weight": 500}]},
        "train": {"epochs": 1},
        "runtime": {"device": "cpu"},
    })
    result = train(spec, quiet=True, write=False)
    report = result.plan.pairs[0]
    assert report.student.shape == (8, 14, 14) and report.teacher.shape == (32, 7, 7)
    assert report.adapters.student_steps == ["resize 14x14→7x7 (bilinear)"]  # the widths stay: no projector
    assert report.adapters.teacher_steps == []
    assert math.isfinite(result.metrics[0]["loss/pair:block1->layer3"])
