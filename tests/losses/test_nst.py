"""NST vs a python-loop float64 reference of the squared MMD with the polynomial kernel."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.nst import NEEDS, nst


def channels(x: torch.Tensor, b: int) -> list[list[float]]:
    """The L2-normalised flattened spatial map of every channel of sample b."""
    out = []
    for row in x[b].reshape(x.shape[1], -1).tolist():
        n = math.sqrt(sum(v * v for v in row))
        out.append([v / max(n, 1e-12) for v in row])
    return out


def ref_nst(s: torch.Tensor, t: torch.Tensor) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        S, T = channels(s, b), channels(t, b)

        def k_mean(A: list[list[float]], B: list[list[float]]) -> float:
            vals = [sum(x * y for x, y in zip(a, bb)) ** 2 for a in A for bb in B]
            return sum(vals) / len(vals)

        total += k_mean(T, T) + k_mean(S, S) - 2 * k_mean(S, T)
    return total / s.shape[0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(17)


@pytest.mark.parametrize(("cs", "ct"), [(3, 3), (2, 5)])
def test_against_reference(gen: torch.Generator, cs: int, ct: int) -> None:
    s = torch.randn(3, cs, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(3, ct, 4, 3, generator=gen, dtype=torch.float64).relu()
    got = nst(s, t)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_nst(s, t), rel=1e-10)
    assert nst(s.float(), t.float()).item() == pytest.approx(ref_nst(s, t), rel=1e-5)


def test_hand_checked() -> None:
    # one channel each over two positions: s = [1, 0], t = [0, 1] -> k(t,t) = k(s,s) = 1, k(s,t) = 0 -> 2
    s = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    t = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    assert nst(s, t).item() == pytest.approx(2.0)
    # [1, 1] vs [1, 0]: normalised (1,1)/sqrt2 . (1,0) = 1/sqrt2 -> k = 1/2 -> 1 + 1 - 1 = 1
    assert nst(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[3.0, 0.0]]])).item() == pytest.approx(1.0, rel=1e-6)


def test_channel_sets_not_order(gen: torch.Generator) -> None:
    t = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    perm = t[:, [2, 0, 3, 1]]
    assert nst(perm, t).item() == pytest.approx(0.0, abs=1e-12)
    assert nst(5.0 * t, t).item() == pytest.approx(0.0, abs=1e-12)  # per-channel normalisation


def test_zero_channel_and_gradients(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64)
    s[:, 1] = 0.0  # a dead channel
    s.requires_grad_(True)
    out = nst(s, torch.randn(2, 4, 2, 2, generator=gen, dtype=torch.float64))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 2, 2, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: nst(a, t), (s,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 4, 3, 3, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 6, 3, 3, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = nst(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_nst(s.detach().double(), t.double()), rel=1e-4)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="spatial grids differ"):
        nst(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="batch sizes differ"):
        nst(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="pooled vectors"):
        nst(torch.zeros(2, 3), torch.zeros(2, 3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"nst"}
