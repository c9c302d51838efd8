"""Projector shapes, parameter counts, auto rules and the MLP structure."""

import pytest
import torch
from torch import nn

from kdgraph.align import AlignmentError, FeatureShape, align_pair
from kdgraph.align.projectors import build_mlp, build_projector, parse_projector, resolve_width
from kdgraph.align.normalizers import TokenBatchNorm


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_auto_identity_when_channels_match():
    p = align_pair(FeatureShape((64, 8, 8), "map"), FeatureShape((64, 8, 8), "map"))
    assert n_params(p.student) == 0 and len(p.student) == 0
    assert p.student_steps == [] and p.teacher_steps == []
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(p.student(x), x)


def test_auto_conv1x1_for_maps():
    p = align_pair(FeatureShape((64, 8, 8), "map"), FeatureShape((128, 8, 8), "map"))
    proj = p.student.proj
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.bias is None
    assert n_params(p.student) == 64 * 128
    assert p.student_steps == ["conv1x1 64→128"]
    assert p.student(torch.randn(2, 64, 8, 8)).shape == (2, 128, 8, 8)
    assert p.out_shape == (128, 8, 8)


def test_auto_linear_for_tokens():
    p = align_pair(FeatureShape((196, 192), "tokens"), FeatureShape((196, 384), "tokens"))
    assert isinstance(p.student.proj, nn.Linear)
    assert n_params(p.student) == 192 * 384 + 384
    assert p.student(torch.randn(2, 196, 192)).shape == (2, 196, 384)


def test_auto_linear_for_vectors():
    p = align_pair(FeatureShape((512,), "vector"), FeatureShape((2048,), "vector"))
    assert isinstance(p.student.proj, nn.Linear)
    assert n_params(p.student) == 512 * 2048 + 2048
    assert p.student(torch.randn(3, 512)).shape == (3, 2048)


def test_linear_on_map_is_conv1x1_with_bias_and_matches_per_position_linear():
    p = align_pair(FeatureShape((16, 5, 5), "map"), FeatureShape((24, 5, 5), "map"), projector={"name": "linear"})
    conv = p.student.proj
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert n_params(p.student) == 16 * 24 + 24
    lin = nn.Linear(16, 24)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.view(24, 16))
        lin.bias.copy_(conv.bias)
    x = torch.randn(2, 16, 5, 5)
    ref = lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(p.student(x), ref)


def test_string_and_dict_projector_agree():
    a = align_pair(FeatureShape((32,), "vector"), FeatureShape((48,), "vector"), projector="linear")
    b = align_pair(FeatureShape((32,), "vector"), FeatureShape((48,), "vector"), projector={"name": "linear"})
    assert a.student_steps == b.student_steps
    assert n_params(a.student) == n_params(b.student) == 32 * 48 + 48


def test_linear_even_when_channels_match():
    p = align_pair(FeatureShape((32,), "vector"), FeatureShape((32,), "vector"), projector="linear")
    assert n_params(p.student) == 32 * 32 + 32


def test_conv1x1_explicit_and_maps_only():
    p = align_pair(FeatureShape((8, 4, 4), "map"), FeatureShape((8, 4, 4), "map"), projector="conv1x1")
    assert n_params(p.student) == 64
    with pytest.raises(AlignmentError, match="projector: linear"):
        align_pair(FeatureShape((8,), "vector"), FeatureShape((16,), "vector"), projector="conv1x1")


@pytest.mark.parametrize("name", ["none", "identity"])
def test_none_and_identity(name):
    p = align_pair(FeatureShape((10, 3), "tokens"), FeatureShape((10, 3), "tokens"), projector=name)
    assert n_params(p.student) == 0
    with pytest.raises(AlignmentError) as e:
        align_pair(FeatureShape((10, 3), "tokens"), FeatureShape((10, 5), "tokens"), projector=name)
    msg = str(e.value)
    assert "tokens (10, 3)" in msg and "tokens (10, 5)" in msg and "projector: auto" in msg


def test_simreg_head_exact_structure():
    d, dt = 64, 100
    spec = {"name": "mlp", "hidden": ["2d", "d", "2d"], "bn": [True, False, True], "relu": [True, False, True]}
    p = align_pair(FeatureShape((d,), "vector"), FeatureShape((dt,), "vector"), projector=spec)
    seq = p.student.proj
    kinds = [type(m) for m in seq]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    lins = [m for m in seq if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(d, 2 * d), (2 * d, d), (d, 2 * d), (2 * d, dt)]
    assert all(l.bias is not None for l in lins)
    bns = [m for m in seq if isinstance(m, nn.BatchNorm1d)]
    assert [b.num_features for b in bns] == [2 * d, 2 * d] and all(b.affine for b in bns)
    expected = (d * 2 * d + 2 * d) + 2 * (2 * d) + (2 * d * d + d) + (d * 2 * d + 2 * d) + 2 * (2 * d) + (2 * d * dt + dt)
    assert n_params(p.student) == expected
    assert p.student(torch.randn(4, d)).shape == (4, dt)


def test_mlp_single_bool_flags_and_default():
    seq, step = build_mlp("vector", 8, 4, hidden=[16, "0.5d"], bn=True, relu=False)
    assert [type(m) for m in seq] == [nn.Linear, nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.Linear]
    assert [m.out_features for m in seq if isinstance(m, nn.Linear)] == [16, 4, 4]
    seq, _ = build_mlp("vector", 8, 4)  # no hidden layers: one Linear
    assert [type(m) for m in seq] == [nn.Linear]


def test_mlp_on_maps_is_per_position_conv():
    p = align_pair(
        FeatureShape((8, 6, 6), "map"),
        FeatureShape((12, 6, 6), "map"),
        projector={"name": "mlp", "hidden": ["2d"], "bn": True, "relu": True},
    )
    seq = p.student.proj
    assert [type(m) for m in seq] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert all(m.kernel_size == (1, 1) for m in seq if isinstance(m, nn.Conv2d))
    assert p.student(torch.randn(2, 8, 6, 6)).shape == (2, 12, 6, 6)
    assert n_params(p.student) == (8 * 16 + 16) + 32 + (16 * 12 + 12)


def test_mlp_on_tokens_uses_token_batchnorm():
    p = align_pair(
        FeatureShape((9, 8), "tokens"), FeatureShape((9, 12), "tokens"), projector={"name": "mlp", "hidden": [10], "bn": True}
    )
    assert isinstance(p.student.proj[1], TokenBatchNorm)
    assert p.student(torch.randn(2, 9, 8)).shape == (2, 9, 12)


def test_resolve_width():
    assert resolve_width("2d", 64) == 128
    assert resolve_width("d", 64) == 64
    assert resolve_width("0.5d", 64) == 32
    assert resolve_width(7, 64) == 7
    for bad in ["2x", "d2", True, 0, "0d"]:
        with pytest.raises(ValueError):
            resolve_width(bad, 64)


def test_bad_projector_specs():
    for bad in ["mlpp", {"hidden": [3]}, {"name": "linear", "hidden": [3]}, 3]:
        with pytest.raises(ValueError):
            parse_projector(bad)
    with pytest.raises(AlignmentError, match="one per hidden layer"):
        align_pair(
            FeatureShape((8,), "vector"), FeatureShape((8,), "vector"), projector={"name": "mlp", "hidden": [4, 4], "bn": [True]}
        )
    with pytest.raises(AlignmentError, match="not one of"):
        align_pair(FeatureShape((8,), "vector"), FeatureShape((8,), "vector"), projector="convv")


def test_build_projector_direct():
    mod, step = build_projector("auto", "tokens", 4, 4)
    assert mod is None and step is None
