"""Pooling, token grids, tokens<->map conversion and spatial resize."""

import pytest
import torch
import torch.nn.functional as F

from kdgraph.align.layout import GlobalAvgPool, MapToTokens, Resize, TokensToMap, token_grid
from kdgraph.align import AlignmentError, FeatureShape, align_pair


def manual_tokens_to_map(tok: torch.Tensor, side: int) -> torch.Tensor:
    b, n, d = tok.shape
    out = torch.empty(b, d, side, side, dtype=tok.dtype)
    for i in range(n):
        out[:, :, i // side, i % side] = tok[:, i, :]
    return out


def test_token_grid():
    assert token_grid(196) == (14, False)
    assert token_grid(197) == (14, True)
    assert token_grid(1) == (1, False)
    assert token_grid(4) == (2, False)
    assert token_grid(5) == (2, True)
    assert token_grid(7) is None
    assert token_grid(50) == (7, True)


def test_resize_student_7x7_to_4x4_bilinear():
    p = align_pair(FeatureShape((8, 7, 7), "map"), FeatureShape((8, 4, 4), "map"))
    assert p.student_steps == ["resize 7x7→4x4 (bilinear)"]
    x = torch.randn(2, 8, 7, 7)
    ref = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(p.student(x), ref)
    assert p.out_shape == (8, 4, 4)


def test_resize_modes():
    x = torch.randn(2, 3, 8, 8)
    p = align_pair(FeatureShape((3, 8, 8), "map"), FeatureShape((3, 4, 4), "map"), resize="avgpool")
    torch.testing.assert_close(p.student(x), F.avg_pool2d(x, 2))
    p = align_pair(FeatureShape((3, 8, 8), "map"), FeatureShape((3, 16, 16), "map"), resize="nearest")
    torch.testing.assert_close(p.student(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    with pytest.raises(AlignmentError, match="resize 'cubic'"):
        align_pair(FeatureShape((3, 8, 8), "map"), FeatureShape((3, 4, 4), "map"), resize="cubic")
    with pytest.raises(ValueError):
        Resize((2, 2), "cubic")


def test_resize_then_project_order():
    p = align_pair(FeatureShape((64, 7, 7), "map"), FeatureShape((128, 4, 4), "map"), normalize="bn")
    assert p.student_steps[:2] == ["resize 7x7→4x4 (bilinear)", "conv1x1 64→128"]
    assert p.student_steps[2].startswith("bn (no affine")
    assert list(dict(p.student.named_children())) == ["resize", "proj", "norm"]


@pytest.mark.parametrize("n,cls", [(16, False), (17, True)])
def test_student_tokens_to_teacher_map(n, cls):
    tok = torch.randn(2, n, 5)
    p = align_pair(FeatureShape((n, 5), "tokens"), FeatureShape((5, 4, 4), "map"))
    body = tok[:, 1:] if cls else tok
    torch.testing.assert_close(p.student(tok), manual_tokens_to_map(body, 4))
    assert ("drop cls token" in p.student_steps[0]) == cls
    assert p.out_shape == (5, 4, 4)


def test_tokens_to_map_roundtrip_and_reshape():
    x = torch.randn(2, 6, 3, 3)
    tok = MapToTokens()(x)
    assert tok.shape == (2, 9, 6)
    torch.testing.assert_close(tok[:, 4], x[:, :, 1, 1])  # row-major
    torch.testing.assert_close(TokensToMap(3)(tok), x)


def test_student_tokens_to_teacher_map_with_resize_and_projection():
    p = align_pair(FeatureShape((197, 8), "tokens"), FeatureShape((16, 7, 7), "map"))
    tok = torch.randn(2, 197, 8)
    out = p.student(tok)
    assert out.shape == (2, 16, 7, 7)
    assert p.student_steps[1] == "resize 14x14→7x7 (bilinear)"
    assert p.student_steps[2] == "conv1x1 8→16"


@pytest.mark.parametrize("n_t,cls", [(16, False), (17, True)])
def test_student_map_to_teacher_tokens(n_t, cls):
    p = align_pair(FeatureShape((6, 8, 8), "map"), FeatureShape((n_t, 6), "tokens"))
    x = torch.randn(2, 6, 8, 8)
    small = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(p.student(x), small.flatten(2).transpose(1, 2))
    t = torch.randn(2, n_t, 6)
    torch.testing.assert_close(p.teacher(t), t[:, 1:] if cls else t)
    assert p.out_shape == (16, 6)
    assert (p.teacher_steps == ["drop cls token"]) == cls


def test_tokens_tokens_cls_only_difference():
    p = align_pair(FeatureShape((197, 8), "tokens"), FeatureShape((196, 8), "tokens"))
    tok = torch.randn(2, 197, 8)
    torch.testing.assert_close(p.student(tok), tok[:, 1:])
    assert p.teacher_steps == []


def test_tokens_tokens_different_grids():
    p = align_pair(FeatureShape((65, 4), "tokens"), FeatureShape((17, 4), "tokens"))
    tok = torch.randn(2, 65, 4)
    m = manual_tokens_to_map(tok[:, 1:], 8)
    ref = F.interpolate(m, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(p.student(tok), ref)
    t = torch.randn(2, 17, 4)
    torch.testing.assert_close(p.teacher(t), t[:, 1:])
    assert p.out_shape == (16, 4)


def test_pool_gap_both_sides():
    p = align_pair(FeatureShape((8, 7, 7), "map"), FeatureShape((197, 16), "tokens"), pool="gap")
    x, t = torch.randn(2, 8, 7, 7), torch.randn(2, 197, 16)
    assert p.out_shape == (16,)
    torch.testing.assert_close(p.teacher(t), t.mean(dim=1))
    assert p.student.pool(x).shape == (2, 8)
    torch.testing.assert_close(p.student.pool(x), x.mean(dim=(2, 3)))
    assert p.student(x).shape == (2, 16)


def test_pool_cls_and_tokens_mean():
    t = torch.randn(2, 10, 4)
    p = align_pair(FeatureShape((10, 4), "tokens"), FeatureShape((10, 4), "tokens"), pool="cls")
    torch.testing.assert_close(p.teacher(t), t[:, 0])
    p = align_pair(FeatureShape((10, 4), "tokens"), FeatureShape((10, 4), "tokens"), pool="tokens-mean")
    torch.testing.assert_close(p.teacher(t), t.mean(1))
    # a map has no cls token: it is global-average-pooled, and the step says so
    p = align_pair(FeatureShape((4, 3, 3), "map"), FeatureShape((10, 4), "tokens"), pool="cls")
    assert "no cls token" in p.student_steps[0]
    assert GlobalAvgPool()(torch.ones(2, 5)).shape == (2, 5)  # vectors pass through


def test_vector_vs_map_needs_pool():
    with pytest.raises(AlignmentError) as e:
        align_pair(FeatureShape((512,), "vector"), FeatureShape((2048, 7, 7), "map"))
    msg = str(e.value)
    assert "vector (512,)" in msg and "map (2048, 7, 7)" in msg and "pool: gap" in msg
    p = align_pair(FeatureShape((512,), "vector"), FeatureShape((2048, 7, 7), "map"), pool="gap")
    assert p.out_shape == (2048,)
    with pytest.raises(AlignmentError, match="pool: cls"):
        align_pair(FeatureShape((8, 4), "tokens"), FeatureShape((4,), "vector"))


def test_non_grid_tokens_fail_with_hint():
    with pytest.raises(AlignmentError) as e:
        align_pair(FeatureShape((50 + 3, 8), "tokens"), FeatureShape((8, 7, 7), "map"))
    assert "53 student tokens" in str(e.value) and "pool: gap" in str(e.value)
    with pytest.raises(AlignmentError, match="teacher tokens"):
        align_pair(FeatureShape((8, 7, 7), "map"), FeatureShape((12, 8), "tokens"))
    with pytest.raises(AlignmentError, match="token counts differ"):
        align_pair(FeatureShape((12, 8), "tokens"), FeatureShape((16, 8), "tokens"))


def test_bad_pool_and_shapes():
    with pytest.raises(AlignmentError, match="pool 'max'"):
        align_pair(FeatureShape((8,), "vector"), FeatureShape((8,), "vector"), pool="max")
    with pytest.raises(ValueError):
        FeatureShape((8, 7), "map")
    with pytest.raises(ValueError):
        FeatureShape((8,), "matrix")
