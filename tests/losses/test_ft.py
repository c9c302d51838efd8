"""Factor transfer vs explicit float64 sums; gradients reach the translator; the paraphraser's shapes."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.ft import NEEDS, Paraphraser, Translator, factor_channels, ft, ft_reconstruction


def unit_rows(x: torch.Tensor) -> list[list[float]]:
    out = []
    for row in x.reshape(x.shape[0], -1).tolist():
        n = math.sqrt(sum(v * v for v in row))
        out.append([v / n for v in row])
    return out


def ref_ft(s: torch.Tensor, t: torch.Tensor, p: int) -> float:
    S, T = unit_rows(s), unit_rows(t)
    vals = [abs(a - b) ** p for rs, rt in zip(S, T) for a, b in zip(rs, rt)]
    return sum(vals) / len(vals)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(21)


@pytest.mark.parametrize("p", [1, 2])
def test_against_reference(gen: torch.Generator, p: int) -> None:
    s = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    got = ft(s, t, p=p)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ft(s, t, p), rel=1e-12)
    assert ft(s.float(), t.float(), p=p).item() == pytest.approx(ref_ft(s, t, p), rel=1e-5)


def test_hand_checked() -> None:
    # (3, 4) -> (0.6, 0.8); (4, -3) -> (0.8, -0.6): |0.6 - 0.8| + |0.8 + 0.6| = 1.6, mean over 2 entries 0.8
    s = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    t = torch.tensor([[4.0, -3.0]], dtype=torch.float64)
    assert ft(s, t).item() == pytest.approx(0.8)
    assert ft(10 * s, s).item() == pytest.approx(0.0, abs=1e-15)  # scale-free
    assert ft_reconstruction(s, t).item() == pytest.approx((1.0 + 7.0) / 2)


def test_modules_shapes_and_gradients(gen: torch.Generator) -> None:
    assert factor_channels(64, 0.5) == 32 and factor_channels(3, 0.5) == 2 and factor_channels(1, 0.1) == 1
    para = Paraphraser(6, rate=0.5)
    trans = Translator(4, para.out_channels)
    t_map = torch.randn(2, 6, 5, 5, generator=gen)
    s_map = torch.randn(2, 4, 5, 5, generator=gen)
    assert para(t_map).shape == t_map.shape
    factor_t = para.encode(t_map)
    assert factor_t.shape == (2, 3, 5, 5)
    # pre-stage: the reconstruction loss trains the paraphraser
    ft_reconstruction(para(t_map), t_map).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in para.parameters())
    # main stage: the factor loss trains the translator (the paraphraser's factor is detached)
    loss = ft(trans(s_map), factor_t.detach())
    loss.backward()
    for name, p in trans.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 4, 4, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = ft(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ft(s.detach().double(), t.double(), 1), rel=1e-5)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ft(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        ft(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="p must be"):
        ft(torch.ones(2, 3), torch.ones(2, 3), p=3)
    with pytest.raises(ValueError, match="same shape"):
        ft_reconstruction(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="rate"):
        factor_channels(8, 0.0)


def test_needs_declared() -> None:
    assert any("pre-stage" in n for n in NEEDS["ft"])
