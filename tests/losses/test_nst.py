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


def pooled(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average over k x k blocks, written out (the grids here divide exactly)."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h // k, w // k, dtype=x.dtype)
    for i in range(h // k):
        for j in range(w // k):
            out[:, :, i, j] = sum(x[:, :, k * i + u, k * j + v] for u in range(k) for v in range(k)) / (k * k)
    return out


def bilinear_up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling with align_corners=False, written out: output position i samples input position
    i / 2 - 1/4, clamped to [0, n - 1]: weights 3/4 and 1/4 on the two nearest inputs, the edges repeated."""
    b, c, h, w = x.shape

    def taps(i: int, n: int) -> tuple[int, int, float]:
        pos = min(max(i / 2 - 0.25, 0.0), n - 1.0)
        lo = int(pos)
        return lo, min(lo + 1, n - 1), pos - lo

    out = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype)
    for i in range(2 * h):
        r0, r1, fr = taps(i, h)
        for j in range(2 * w):
            c0, c1, fc = taps(j, w)
            out[:, :, i, j] = ((1 - fr) * ((1 - fc) * x[:, :, r0, c0] + fc * x[:, :, r0, c1])
                               + fr * ((1 - fc) * x[:, :, r1, c0] + fc * x[:, :, r1, c1]))
    return out


def test_different_grids_pooled_by_default_or_interpolated(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64)  # the student's coarser map
    t = torch.randn(2, 5, 6, 8, generator=gen, dtype=torch.float64).relu()
    pooled_value = nst(s, t).item()
    assert pooled_value == pytest.approx(ref_nst(s, pooled(t, 2)), rel=1e-10)  # RepDistiller: the finer map pooled
    assert nst(t, s).item() == pytest.approx(ref_nst(pooled(t, 2), s), rel=1e-10)  # a finer student is pooled
    interpolated = nst(s, t, grid="interpolate").item()
    assert interpolated == pytest.approx(ref_nst(bilinear_up2(s), t), rel=1e-10)  # kdgraph before issue #33
    assert abs(pooled_value - interpolated) > 1e-3  # the docstring's point: the two are not the same loss


def test_validation() -> None:
    with pytest.raises(ValueError, match="spatial grids differ"):  # (B, C, N) maps: no grid to pool over
        nst(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="grid must be one of pool, interpolate"):
        nst(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), grid="upsample")
    with pytest.raises(ValueError, match="batch sizes differ"):
        nst(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="pooled vectors"):
        nst(torch.zeros(2, 3), torch.zeros(2, 3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"nst"}
