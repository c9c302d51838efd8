"""ICKD vs explicit sums over channels and positions in float64."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.ickd import NEEDS, channel_correlation, ickd


def ref_corr(x: torch.Tensor, b: int) -> list[list[float]]:
    f = x[b].reshape(x.shape[1], -1).tolist()
    G = [[sum(p * q for p, q in zip(fi, fj)) for fj in f] for fi in f]
    return [[v / max(math.sqrt(sum(w * w for w in row)), 1e-12) for v in row] for row in G]


def ref_ickd(s: torch.Tensor, t: torch.Tensor) -> float:
    B, C = s.shape[:2]
    total = 0.0
    for b in range(B):
        Gs, Gt = ref_corr(s, b), ref_corr(t, b)
        total += sum((Gs[i][j] - Gt[i][j]) ** 2 for i in range(C) for j in range(C))
    return total / (B * C)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(30)


@pytest.mark.parametrize("t_grid", [(4, 4), (2, 3)])
def test_against_reference(gen: torch.Generator, t_grid: tuple[int, int]) -> None:
    s = torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 4, *t_grid, generator=gen, dtype=torch.float64)
    got = ickd(s, t)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ickd(s, t), rel=1e-12)
    assert ickd(s.float(), t.float()).item() == pytest.approx(ref_ickd(s, t), rel=1e-5)


def test_hand_checked() -> None:
    # C = 2 over 2 positions: G^s = I; G^t = 2 * ones -> rows (1/sqrt2, 1/sqrt2):
    # 2 (1 - 1/sqrt2)^2 + 2 (1/2) = 4 - 2 sqrt2, divided by B * C = 2
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    t = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    assert ickd(s, t).item() == pytest.approx((4 - 2 * math.sqrt(2)) / 2, rel=1e-12)
    torch.testing.assert_close(channel_correlation(s), torch.eye(2, dtype=torch.float64)[None])
    assert ickd(7.0 * t, t).item() == pytest.approx(0.0, abs=1e-15)


def test_gradients_reach_a_projector(gen: torch.Generator) -> None:
    proj = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1, bias=False), torch.nn.BatchNorm2d(5))
    s = torch.randn(2, 3, 4, 4, generator=gen)
    t = torch.randn(2, 5, 4, 4, generator=gen)
    ickd(proj(s), t).backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ickd(a, t), (s,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 4, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 4, 4, 4, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = ickd(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ickd(s.detach().double(), t.double()), rel=1e-4)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        ickd(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="pooled vectors"):
        ickd(torch.zeros(2, 3), torch.zeros(2, 3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"ickd"}
