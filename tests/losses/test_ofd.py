"""OFD: margin vs a closed form and a numerical integral, partial L2 vs an element-by-element reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdgraph.losses.ofd import NEEDS, OFDConnector, ofd, ofd_margin, ofd_margin_from_bn


def Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def ref_margin_integral(mu: float, sigma: float, steps: int = 200_000) -> float:
    """E[x | x < 0] for x ~ N(mu, sigma^2) by a midpoint sum over [mu - 12 sigma, 0]."""
    lo = min(mu - 12 * sigma, -12 * sigma)
    h = (0.0 - lo) / steps
    num = den = 0.0
    for i in range(steps):
        x = lo + (i + 0.5) * h
        p = math.exp(-0.5 * ((x - mu) / sigma) ** 2)
        num += x * p
        den += p
    return num / den


def ref_ofd(s: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> float:
    total = 0.0
    B, C = s.shape[:2]
    for b in range(B):
        for c in range(C):
            for a, y in zip(s[b, c].flatten().tolist(), t[b, c].flatten().tolist()):
                target = max(y, float(m[c]))
                if a <= target <= 0:
                    continue  # both off and the student already below: no penalty
                total += (a - target) ** 2
    return total / B


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(20)


def test_margin_hand_checked() -> None:
    # standard normal: E[x | x < 0] = -phi(0) / Phi(0) = -sqrt(2 / pi)
    m = ofd_margin(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert m.item() == pytest.approx(-math.sqrt(2.0 / math.pi), rel=1e-12)
    # almost no negative mass (Phi(-5) = 2.9e-7 <= 1e-3): -3 sigma; the sign of the BN weight is ignored
    m = ofd_margin(torch.tensor([-2.0]), torch.tensor([10.0]))
    assert m.item() == pytest.approx(-6.0) and m.dtype == torch.float32


@pytest.mark.parametrize(("mu", "sigma"), [(0.5, 1.0), (-1.0, 0.3), (2.0, 1.5), (0.0, 0.1)])
def test_margin_is_the_conditional_mean(mu: float, sigma: float) -> None:
    m = ofd_margin(torch.tensor([sigma], dtype=torch.float64), torch.tensor([mu], dtype=torch.float64)).item()
    assert Phi(-mu / sigma) > 1e-3
    assert m == pytest.approx(ref_margin_integral(mu, sigma), rel=1e-6)
    assert m < 0


def test_margin_from_bn() -> None:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.2, -1.0]))
    got = ofd_margin_from_bn(bn)
    want = [ref_margin_integral(mu, s) for s, mu in [(1.0, 0.0), (0.5, 0.2), (2.0, -1.0)]]
    for g, w in zip(got.tolist(), want):
        assert g == pytest.approx(w, rel=1e-5)
    with pytest.raises(ValueError, match="affine"):
        ofd_margin_from_bn(nn.BatchNorm2d(3, affine=False))
    with pytest.raises(ValueError, match=r"\(C,\)"):
        ofd_margin(torch.ones(3), torch.ones(2))


def test_against_reference(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64) * 2
    m = torch.tensor([-0.5, -0.8, -2.0], dtype=torch.float64)
    got = ofd(s, t, margin=m)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ofd(s, t, m), rel=1e-12)
    assert ofd(s.float(), t.float(), margin=m.float()).item() == pytest.approx(ref_ofd(s, t, m), rel=1e-5)


def test_hand_checked_partial_l2() -> None:
    m = torch.tensor([-1.0], dtype=torch.float64)
    # teacher -3 -> target -1: student -2 is below it (no penalty), student 0.5 is above ((0.5 + 1)^2 = 2.25);
    # teacher -0.5 (above the margin): student -0.7 below (none), student 0 above (0.25);
    # teacher 2 (positive): always squared: student 1 -> 1
    s = torch.tensor([[[-2.0, 0.5, -0.7, 0.0, 1.0]]], dtype=torch.float64)
    t = torch.tensor([[[-3.0, -3.0, -0.5, -0.5, 2.0]]], dtype=torch.float64)
    assert ofd(s, t, margin=m).item() == pytest.approx(2.25 + 0.25 + 1.0)


def test_gradient_reaches_the_connector(gen: torch.Generator) -> None:
    conn = OFDConnector(4, 6)
    s = torch.randn(3, 4, 5, 5, generator=gen)
    t = torch.randn(3, 6, 5, 5, generator=gen)
    ofd(conn(s), t, margin=torch.full((6,), -0.5)).backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_connector_init() -> None:
    conn = OFDConnector(8, 16)
    assert conn[0].bias is None and conn[0].kernel_size == (1, 1)
    assert torch.equal(conn[1].weight, torch.ones(16)) and torch.equal(conn[1].bias, torch.zeros(16))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 4, 4, generator=gen).bfloat16()
    m = torch.tensor([-0.3, -0.6, -1.0])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = ofd(s, t, margin=m)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ofd(s.detach().double(), t.double(), m.double()), rel=1e-5)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="margin must be a"):
        ofd(z, z, margin=torch.zeros(4))
    with pytest.raises(ValueError, match="widths differ"):
        ofd(torch.zeros(2, 2, 4, 4), z, margin=torch.zeros(3))


def test_needs_declared() -> None:
    assert any("BatchNorm" in n for n in NEEDS["ofd"]) and any("pre-activation" in n for n in NEEDS["ofd"])
