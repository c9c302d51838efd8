"""VID's negative log-likelihood vs an element-by-element float64 reference; the regressor's init and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.vid import NEEDS, VIDRegressor, vid


def ref_vid(mu: torch.Tensor, t: torch.Tensor, var: torch.Tensor) -> float:
    total, n = 0.0, 0
    B, C = mu.shape[:2]
    for b in range(B):
        for c in range(C):
            v = float(var[c])
            for m, y in zip(mu[b, c].flatten().tolist(), t[b, c].flatten().tolist()):
                total += 0.5 * ((y - m) ** 2 / v + math.log(v))
                n += 1
    return total / n


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(29)


def test_against_reference(gen: torch.Generator) -> None:
    mu = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    var = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    got = vid(mu, t, variance=var)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_vid(mu, t, var), rel=1e-12)
    assert vid(mu.float(), t.float(), variance=var.float()).item() == pytest.approx(ref_vid(mu, t, var), rel=1e-5)


def test_hand_checked() -> None:
    # one entry, error 2, variance 4: 0.5 * (4 / 4 + ln 4) = 0.5 + ln 2
    mu = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    t = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    assert vid(mu, t, variance=torch.tensor([4.0], dtype=torch.float64)).item() == pytest.approx(0.5 + math.log(2))


def test_regressor_init_and_shapes(gen: torch.Generator) -> None:
    reg = VIDRegressor(4, 6)
    torch.testing.assert_close(reg.variance(), torch.full((6,), 5.0))
    assert [m.out_channels for m in reg.regressor if isinstance(m, torch.nn.Conv2d)] == [6, 6, 6]
    assert all(m.bias is None for m in reg.regressor if isinstance(m, torch.nn.Conv2d))
    assert VIDRegressor(4, 6, mid_channels=3, init_var=2.0).variance()[0].item() == pytest.approx(2.0)
    assert reg(torch.randn(2, 4, 5, 5, generator=gen)).shape == (2, 6, 5, 5)
    with pytest.raises(ValueError, match="init_var"):
        VIDRegressor(4, 6, init_var=0.0)


def test_gradients_reach_regressor_and_variance(gen: torch.Generator) -> None:
    reg = VIDRegressor(4, 6)
    s = torch.randn(2, 4, 3, 3, generator=gen)
    t = torch.randn(2, 6, 3, 3, generator=gen)
    vid(reg(s), t, variance=reg.variance()).backward()
    for name, p in reg.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_variance_optimum_is_the_mean_squared_error(gen: torch.Generator) -> None:
    # d/dv of 1/2 (e^2 / v + log v) = 0 at v = mean e^2: the learned variance tracks the regression error
    mu = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    t = torch.randn(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.tensor([float((t * t).mean())], dtype=torch.float64, requires_grad=True)
    vid(mu, t, variance=v).backward()
    assert abs(v.grad.item()) < 1e-12


def test_bf16_autocast(gen: torch.Generator) -> None:
    mu = torch.randn(2, 3, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 4, 4, generator=gen).bfloat16()
    var = torch.tensor([1.0, 2.0, 3.0])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = vid(mu, t, variance=var)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_vid(mu.detach().double(), t.double(), var.double()), rel=1e-5)
    out.backward()
    assert mu.grad is not None


def test_validation() -> None:
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="variance must be"):
        vid(z, z, variance=torch.ones(4))
    with pytest.raises(ValueError, match="grids differ"):
        vid(z, torch.zeros(2, 3, 2, 2), variance=torch.ones(3))
    with pytest.raises(ValueError, match="widths differ"):
        vid(torch.zeros(2, 4, 4, 4), z, variance=torch.ones(3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"vid"}
