"""PKT losses vs explicit python-loop float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdgraph.losses import pkt_combined, pkt_cosine

EPS = 1e-7


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.detach().double().reshape(x.shape[0], -1).tolist()


def ref_cos_P(x: list[list[float]], eps: float = EPS) -> list[list[float]]:
    B = len(x)
    normed = []
    for v in x:
        n = math.sqrt(sum(a * a for a in v))
        normed.append([a / (n + eps) for a in v])
    K = [[(sum(a * b for a, b in zip(normed[i], normed[j])) + 1) / 2 for j in range(B)] for i in range(B)]
    return [[K[i][j] / sum(K[i]) for j in range(B)] for i in range(B)]


def ref_dist_P(x: list[list[float]]) -> list[list[float]]:
    B = len(x)
    K = [[1.0 / (1.0 + math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])))) for j in range(B)] for i in range(B)]
    return [[K[i][j] / sum(K[i]) for j in range(B)] for i in range(B)]


def ref_pkt(s: list[list[float]], t: list[list[float]], eps: float = EPS) -> float:
    Ps, Pt = ref_cos_P(s, eps), ref_cos_P(t, eps)
    B = len(s)
    total = sum(Pt[i][j] * math.log((Pt[i][j] + eps) / (Ps[i][j] + eps)) for i in range(B) for j in range(B))
    return total / (B * B)  # torch.mean over the B x B matrix


def ref_jeffreys(Pt: list[list[float]], Ps: list[list[float]], eps: float = EPS) -> float:
    B = len(Pt)
    total = 0.0
    for i in range(B):
        for j in range(B):
            total += (Pt[i][j] - Ps[i][j]) * (math.log(Pt[i][j] + eps) - math.log(Ps[i][j] + eps))
    return total / (B * B)


def ref_combined(s: list[list[float]], t: list[list[float]], eps: float = EPS) -> float:
    return ref_jeffreys(ref_cos_P(t, eps), ref_cos_P(s, eps), eps) + ref_jeffreys(ref_dist_P(t), ref_dist_P(s), eps)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("s_shape", "t_shape"), [((5, 4), (5, 4)), ((4, 2, 3, 3), (4, 7)), ((6, 3), (6, 2, 2))])
def test_against_reference(
    gen: torch.Generator, dtype: torch.dtype, s_shape: tuple[int, ...], t_shape: tuple[int, ...]
) -> None:
    s = torch.randn(*s_shape, generator=gen, dtype=dtype)
    t = torch.randn(*t_shape, generator=gen, dtype=dtype)
    rel = 1e-4 if dtype == torch.float32 else 1e-10
    got = pkt_cosine(s, t)
    assert got.ndim == 0 and got.dtype == dtype
    assert got.item() == pytest.approx(ref_pkt(rows(s), rows(t)), rel=rel, abs=1e-7)
    got_c = pkt_combined(s, t)
    assert got_c.ndim == 0 and got_c.dtype == dtype
    assert got_c.item() == pytest.approx(ref_combined(rows(s), rows(t)), rel=rel, abs=1e-7)


def test_pkt_is_full_matrix_mean_not_row_mean() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [-1.0, 0.2], [0.3, -1.0]], dtype=torch.float64)
    Ps, Pt = ref_cos_P(rows(s)), ref_cos_P(rows(t))
    row_kl_mean = sum(Pt[i][j] * math.log((Pt[i][j] + EPS) / (Ps[i][j] + EPS)) for i in range(3) for j in range(3)) / 3
    assert pkt_cosine(s, t).item() == pytest.approx(row_kl_mean / 3, rel=1e-10)


def test_identical_and_scaled_features_give_zero(gen: torch.Generator) -> None:
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    assert pkt_cosine(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert pkt_combined(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # cosine kernel is scale invariant, distance kernel is not
    assert pkt_cosine(3 * x, x).item() == pytest.approx(0.0, abs=1e-9)
    assert pkt_combined(3 * x, x).item() > 1e-4


def test_distance_kernel_uses_raw_features(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = 5 * s
    Pt, Ps = ref_dist_P(rows(t)), ref_dist_P(rows(s))
    assert pkt_combined(s, t).item() == pytest.approx(ref_jeffreys(Pt, Ps), rel=1e-10)


def test_batch_of_one_and_duplicates() -> None:
    s = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 5, dtype=torch.float64)
    assert pkt_cosine(s, t).item() == pytest.approx(0.0, abs=1e-12)
    assert pkt_combined(s, t).item() == pytest.approx(0.0, abs=1e-12)
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    out = pkt_combined(dup, other)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(dup.grad).all()
    assert out.item() == pytest.approx(ref_combined(rows(dup), rows(other)), rel=1e-9)


def test_zero_feature_row_is_finite() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    for fn in (pkt_cosine, pkt_combined):
        out = fn(s, t)
        (g,) = torch.autograd.grad(out, s)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    assert pkt_cosine(s, t).item() == pytest.approx(ref_pkt(rows(s), rows(t)), rel=1e-10)


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pkt_cosine, (s, t))
    assert torch.autograd.gradcheck(pkt_combined, (s, t))


def test_gradient_direction_reduces_loss(gen: torch.Generator) -> None:
    s = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    for fn in (pkt_cosine, pkt_combined):
        x = s.detach().clone().requires_grad_(True)
        before = fn(x, t)
        (g,) = torch.autograd.grad(before, x)
        after = fn(x.detach() - 0.1 * g / g.norm(), t)
        assert after.item() < before.item()


@pytest.mark.parametrize("fn", [pkt_cosine, pkt_combined])
def test_bf16_autocast(gen: torch.Generator, fn) -> None:  # type: ignore[no-untyped-def]
    s = torch.randn(8, 4, 2, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(8, 16, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = fn(s, t)
    assert out.dtype == torch.float32
    want = fn(s.detach().double(), t.double()).item()
    assert out.item() == pytest.approx(want, rel=1e-4)
    out.backward()
    assert torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("fn", [pkt_cosine, pkt_combined])
def test_batch_mismatch(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        fn(torch.zeros(3, 4), torch.zeros(4, 4))


def test_numpy_cross_check(gen: torch.Generator) -> None:
    # vectorised numpy version of the published formula, independent of torch
    s = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 3, generator=gen, dtype=torch.float64)

    def P(x: np.ndarray) -> np.ndarray:
        xn = x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)
        k = (xn @ xn.T + 1) / 2
        return k / k.sum(axis=1, keepdims=True)

    ps, pt = P(s.numpy()), P(t.numpy())
    want = np.mean(pt * np.log((pt + EPS) / (ps + EPS)))
    assert pkt_cosine(s, t).item() == pytest.approx(float(want), rel=1e-10)
