"""Normalisers against their formulas written out by hand, in float64."""

import pytest
import torch
from torch import nn

from kdgraph.align.normalizers import build_normalizer, parse_normalizer
from kdgraph.align import AlignmentError, FeatureShape, align_pair


def manual_bn(x: torch.Tensor, channel_dim: int, eps: float) -> torch.Tensor:
    """(x - mean_batch) / sqrt(var_biased + eps), one channel at a time."""
    out = torch.empty_like(x)
    xm = x.movedim(channel_dim, 0)
    om = out.movedim(channel_dim, 0)
    for c in range(xm.shape[0]):
        v = xm[c]
        mean = v.sum() / v.numel()
        var = ((v - mean) ** 2).sum() / v.numel()
        om[c] = (v - mean) / torch.sqrt(var + eps)
    return out


@pytest.mark.parametrize(
    "layout,shape,channel_dim",
    [("map", (4, 3, 5, 5), 1), ("tokens", (4, 7, 3), 2), ("vector", (6, 3), 1)],
)
def test_bn_no_affine_matches_formula_train_and_eval(layout, shape, channel_dim):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    mod, step = build_normalizer("bn", layout, 3)
    assert step.startswith("bn (no affine")
    assert sum(p.numel() for p in mod.parameters()) == 0
    ref = manual_bn(x, channel_dim, 1e-4)
    torch.testing.assert_close(mod.train()(x), ref)
    torch.testing.assert_close(mod.eval()(x), ref)  # no running stats: same in eval


def test_bn_eps_from_dict():
    x = torch.randn(5, 4, dtype=torch.float64)
    mod, _ = build_normalizer({"name": "bn", "eps": 0.5}, "vector", 4)
    torch.testing.assert_close(mod(x), manual_bn(x, 1, 0.5))


@pytest.mark.parametrize("layout,shape,dim", [("map", (2, 6, 3, 3), 1), ("tokens", (2, 5, 6), -1), ("vector", (3, 6), -1)])
def test_l2(layout, shape, dim):
    x = torch.randn(*shape, dtype=torch.float64)
    mod, _ = build_normalizer("l2", layout, 6)
    ref = x / torch.sqrt((x**2).sum(dim=dim, keepdim=True))
    torch.testing.assert_close(mod(x), ref)


@pytest.mark.parametrize("layout,shape,dim", [("map", (2, 6, 3, 3), 1), ("tokens", (2, 5, 6), -1), ("vector", (3, 6), -1)])
def test_layernorm(layout, shape, dim):
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 0.5
    mod, _ = build_normalizer("layernorm", layout, 6)
    mean = x.mean(dim=dim, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dim, keepdim=True)
    torch.testing.assert_close(mod(x), (x - mean) / torch.sqrt(var + 1e-5))
    assert sum(p.numel() for p in mod.parameters()) == 0


def test_none():
    assert build_normalizer("none", "map", 3) == (None, None)
    assert build_normalizer(None, "map", 3) == (None, None)


def test_separate_instances_per_side():
    p = align_pair(FeatureShape((8, 4, 4), "map"), FeatureShape((16, 4, 4), "map"), normalize="bn")
    assert isinstance(p.student.norm, nn.BatchNorm2d) and isinstance(p.teacher.norm, nn.BatchNorm2d)
    assert p.student.norm is not p.teacher.norm
    assert not p.teacher.norm.affine and not p.teacher.norm.track_running_stats
    assert p.teacher.norm.eps == 1e-4
    assert sum(q.numel() for q in p.teacher.parameters()) == 0
    assert p.student_steps[-1].startswith("bn (no affine") and p.teacher_steps[-1].startswith("bn (no affine")


def test_bad_normalize_specs():
    for bad in ["batchnorm", {"eps": 1e-4}, {"name": "bn", "momentum": 0.1}, {"name": "bn", "eps": -1}, {"name": "none", "eps": 1}]:
        with pytest.raises(ValueError):
            parse_normalizer(bad)
    with pytest.raises(AlignmentError, match="not one of none, bn, l2, layernorm"):
        align_pair(FeatureShape((8,), "vector"), FeatureShape((8,), "vector"), normalize="batchnorm")
