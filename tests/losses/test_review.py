"""ReviewKD: HCL vs explicit block averages in float64, the ABF fusion written out, gradients reach the fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdgraph.losses.review import ABF, NEEDS, ReviewKDFusion, hcl, review_kd


def block_mean(x: torch.Tensor, level: int) -> list[float]:
    """Average of each (H/level x W/level) block, every (b, c), in loops (H, W divisible by level)."""
    B, C, H, W = x.shape
    bh, bw = H // level, W // level
    out = []
    for b in range(B):
        for c in range(C):
            for i in range(level):
                for j in range(level):
                    vals = [float(x[b, c, i * bh + u, j * bw + v]) for u in range(bh) for v in range(bw)]
                    out.append(sum(vals) / len(vals))
    return out


def mse(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def ref_hcl(s: torch.Tensor, t: torch.Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> float:
    loss = mse(s.flatten().tolist(), t.flatten().tolist())
    weight = total = 1.0
    for level in levels:
        if level >= s.shape[2]:
            continue
        weight /= 2
        loss += weight * mse(block_mean(s, level), block_mean(t, level))
        total += weight
    return loss / total


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(25)


@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_hcl_against_reference(gen: torch.Generator, size: int) -> None:
    s = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    got = hcl(s, t)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_hcl(s, t), rel=1e-12)
    assert hcl(s.float(), t.float()).item() == pytest.approx(ref_hcl(s, t), rel=1e-5)


def test_hcl_hand_checked() -> None:
    # a constant difference d survives every pooling: HCL = d^2
    t = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    assert hcl(t + 3.0, t).item() == pytest.approx(9.0, rel=1e-12)
    # a 2x2 checkerboard of +-1: full MSE 1; level 1 (the only one < 2) pools to 0: (1 + 0.5 * 0) / 1.5
    s = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]], dtype=torch.float64)
    assert hcl(s, torch.zeros_like(s)).item() == pytest.approx(2.0 / 3.0, rel=1e-12)
    # pooled vectors are 1x1 maps: plain MSE
    assert hcl(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(1.0)


def test_review_kd_sums_stages(gen: torch.Generator) -> None:
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    s = [r(2, 3, 8, 8), r(2, 5, 4, 4)]
    t = [torch.randn_like(x) for x in s]
    assert review_kd(s, t).item() == pytest.approx(ref_hcl(s[0], t[0]) + ref_hcl(s[1], t[1]), rel=1e-12)
    assert review_kd(s, t, levels=(2,)).item() == pytest.approx(
        ref_hcl(s[0], t[0], (2,)) + ref_hcl(s[1], t[1], (2,)), rel=1e-12
    )


def test_abf_fusion_written_out(gen: torch.Generator) -> None:
    block = ABF(4, 6, 5, fuse=True).double().eval()
    x = torch.randn(2, 4, 4, 4, generator=gen, dtype=torch.float64)
    r = torch.randn(2, 6, 2, 2, generator=gen, dtype=torch.float64)
    out, residual = block(x, r, (8, 8))
    # the same computation with the block's layers, the 2x nearest upsampling written as repeat_interleave
    h = block.conv1(x)
    up = r.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    att_conv = block.att[0]
    a = torch.sigmoid(F.conv2d(torch.cat([h, up], 1), att_conv.weight, att_conv.bias))
    fused = h * a[:, :1] + up * a[:, 1:]
    fused = fused.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # to the teacher's 8x8
    torch.testing.assert_close(residual, fused)
    torch.testing.assert_close(out, block.conv2(fused))
    assert out.shape == (2, 5, 8, 8)


def test_fusion_shapes_and_gradients(gen: torch.Generator) -> None:
    # student stages (8ch 8x8, 16ch 4x4, pooled 16), teacher stages (4ch 8x8, 8ch 4x4, 12ch 1x1)
    fusion = ReviewKDFusion([8, 16, 16], [4, 8, 12], out_sizes=[(8, 8), (4, 4), (1, 1)])
    assert [b.att is not None for b in fusion.blocks] == [True, True, False]
    assert fusion.blocks[0].conv1[0].out_channels == 16  # min(512, deepest student width)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    s = [r(2, 8, 8, 8), r(2, 16, 4, 4), r(2, 16)]
    t = [r(2, 4, 8, 8), r(2, 8, 4, 4), r(2, 12, 1, 1)]
    out = fusion(s)
    assert [tuple(o.shape) for o in out] == [tuple(x.shape) for x in t]
    review_kd(out, t).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 8, 8, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 8, 8, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = review_kd([s], [t])
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_hcl(s.detach().double(), t.double()), rel=1e-5)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        hcl(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="stages"):
        review_kd([torch.zeros(2, 3, 4, 4)], [])
    with pytest.raises(ValueError, match="single tensor"):
        review_kd(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one teacher width per student stage"):
        ReviewKDFusion([8, 16], [4])
    fusion = ReviewKDFusion([8, 16], [4, 8])
    with pytest.raises(ValueError, match="expected 2 student stages"):
        fusion([torch.zeros(2, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"stage 1 must be a \(B, 16, H, W\)"):
        fusion([torch.zeros(2, 8, 4, 4), torch.zeros(2, 12, 2, 2)])
    with pytest.raises(ValueError, match="residual"):
        ABF(4, 4, 4, fuse=True)(torch.zeros(1, 4, 2, 2))


def test_needs_declared() -> None:
    assert any("several taps" in n for n in NEEDS["review_kd"])
