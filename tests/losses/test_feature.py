"""Feature losses vs explicit numpy / python-loop float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdgraph.losses import LOGSUM_FLOOR, cosine, l1, logsum, logsum_corr, mse


def flat(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy().reshape(x.shape[0], -1)


def ref_mse(s: np.ndarray, t: np.ndarray) -> float:
    vals = [(a - b) ** 2 for a, b in zip(s.ravel().tolist(), t.ravel().tolist())]
    return sum(vals) / len(vals)


def ref_l1(s: np.ndarray, t: np.ndarray) -> float:
    vals = [abs(a - b) for a, b in zip(s.ravel().tolist(), t.ravel().tolist())]
    return sum(vals) / len(vals)


def ref_cosine(s: np.ndarray, t: np.ndarray) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        dot = sum(x * y for x, y in zip(s[b], t[b]))
        ns = math.sqrt(sum(x * x for x in s[b]))
        nt = math.sqrt(sum(y * y for y in t[b]))
        total += 2 - 2 * dot / (ns * nt)
    return total / s.shape[0]


def ref_logsum(s: np.ndarray, t: np.ndarray, alpha: float) -> float:
    return math.log(sum(abs(a - b) ** alpha for a, b in zip(s.ravel().tolist(), t.ravel().tolist())))


def ref_logsum_corr(s: np.ndarray, t: np.ndarray, alpha: float, eps: float) -> float:
    B, D = s.shape
    total = 0.0
    for k in range(D):
        c = sum(float(s[b, k]) * float(t[b, k]) for b in range(B)) / B
        total += abs(c - 1.0) ** alpha
    return math.log(total + eps)


SHAPES = [(3, 5), (2, 3, 4, 4), (4, 2, 6)]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_reference(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    s = torch.randn(*shape, generator=gen, dtype=dtype)
    t = torch.randn(*shape, generator=gen, dtype=dtype)
    fs, ft = flat(s), flat(t)
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    cases = [
        (mse(s, t), ref_mse(fs, ft)),
        (l1(s, t), ref_l1(fs, ft)),
        (cosine(s, t), ref_cosine(fs, ft)),
        (logsum(s, t), ref_logsum(fs, ft, 4.0)),
        (logsum(s, t, alpha=2.0), ref_logsum(fs, ft, 2.0)),
        (logsum_corr(s, t), ref_logsum_corr(fs, ft, 4.0, 1e-5)),
        (logsum_corr(s, t, alpha=1.5, eps=0.1), ref_logsum_corr(fs, ft, 1.5, 0.1)),
    ]
    for got, want in cases:
        assert got.ndim == 0 and got.dtype == dtype
        assert got.item() == pytest.approx(want, rel=rel, abs=rel)


def test_cosine_known_values() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 5.0]])
    # per sample 2 - 2cos: 0, 4, 2 -> mean 2
    assert cosine(s, t).item() == pytest.approx(2.0, abs=1e-6)
    assert cosine(5 * t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_zero_vector_is_safe() -> None:
    s = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.ones(2, 3, dtype=torch.float64)
    out = cosine(s, t)
    out.backward()
    assert out.item() == pytest.approx(2.0) and torch.isfinite(s.grad).all()


def test_logsum_is_sum_not_mean() -> None:
    s = torch.zeros(2, 3)
    t = torch.full((2, 3), 2.0)
    assert logsum(s, t).item() == pytest.approx(math.log(6 * 16), rel=1e-6)


def test_logsum_floor_when_equal() -> None:
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = logsum(s, s.detach().clone())
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(math.log(LOGSUM_FLOOR))
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    # a tiny difference whose sum is below the floor is clamped too ...
    t = torch.zeros(1, 4, dtype=torch.float64)
    t[0, 0] = 1e-4  # 1e-16 < 1e-12
    assert logsum(torch.zeros(1, 4, dtype=torch.float64), t).item() == pytest.approx(math.log(LOGSUM_FLOOR))
    # ... while one just above it is not
    t[0, 0] = 1e-2  # 1e-8
    assert logsum(torch.zeros(1, 4, dtype=torch.float64), t).item() == pytest.approx(math.log(1e-8))


def test_logsum_float32_no_overflow_or_underflow() -> None:
    # |d|^4 would overflow (1e40) / underflow (1e-48) float32 if computed directly
    big = logsum(torch.zeros(2, 2), torch.full((2, 2), 1e10))
    assert big.item() == pytest.approx(math.log(4) + 40 * math.log(10), rel=1e-6)
    small = logsum(torch.zeros(2, 2), torch.full((2, 2), 1e-2))
    assert small.item() == pytest.approx(math.log(4e-8), rel=1e-6)


def test_logsum_corr_perfect_correlation() -> None:
    # c_k = 1 for every k -> log(eps)
    s = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert logsum_corr(s, s.clone()).item() == pytest.approx(math.log(1e-5), rel=1e-5)


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    for fn in (mse, l1, cosine, logsum, logsum_corr):
        assert torch.autograd.gradcheck(fn, (s, t)), fn.__name__
    assert torch.autograd.gradcheck(lambda a, b: logsum(a, b, alpha=2.5), (s, t))


def test_logsum_gradient_matches_analytic(gen: torch.Generator) -> None:
    # d/ds log S = alpha |d|^(alpha-1) sign(d) / S, written out with numpy
    s = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    logsum(s, t, alpha=3.0).backward()
    d = s.detach().numpy() - t.numpy()
    S = np.sum(np.abs(d) ** 3)
    np.testing.assert_allclose(s.grad.numpy(), 3 * np.abs(d) ** 2 * np.sign(d) / S, rtol=1e-10)


@pytest.mark.parametrize("fn", [mse, l1, cosine, logsum, logsum_corr])
def test_bf16_autocast(gen: torch.Generator, fn) -> None:  # type: ignore[no-untyped-def]
    s = torch.randn(4, 3, 2, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(4, 3, 2, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = fn(s, t)
    want = fn(s.detach().double(), t.double()).item()
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(want, rel=1e-5)
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("fn", [mse, l1, cosine, logsum, logsum_corr])
def test_shape_validation(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        fn(torch.zeros(2, 6), torch.zeros(2, 2, 3))
    with pytest.raises(ValueError):
        fn(torch.zeros(()), torch.zeros(()))


def test_alpha_validation() -> None:
    with pytest.raises(ValueError):
        logsum(torch.zeros(1, 2), torch.ones(1, 2), alpha=0.0)
    with pytest.raises(ValueError):
        logsum_corr(torch.zeros(1, 2), torch.ones(1, 2), alpha=-1.0)


finite = st.floats(-10, 10, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(st.lists(finite, min_size=8, max_size=8), st.lists(finite, min_size=8, max_size=8), st.floats(1.0, 6.0))
def test_logsum_property(sv: list[float], tv: list[float], alpha: float) -> None:
    s = torch.tensor(sv, dtype=torch.float64).reshape(2, 4)
    t = torch.tensor(tv, dtype=torch.float64).reshape(2, 4)
    total = sum(abs(a - b) ** alpha for a, b in zip(sv, tv))
    want = math.log(max(total, LOGSUM_FLOOR))
    assert logsum(s, t, alpha=alpha).item() == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_feature_distance_is_the_batch_euclidean_norm():
    import math

    from kdgraph.losses import feature_distance

    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    expected = math.sqrt(1.0 ** 2 + 0.0 ** 2 + 2.0 ** 2 + 3.0 ** 2)
    value = feature_distance(s, t)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value.backward()
    manual = [[(1.0 - 0.0) / expected, 0.0], [(3.0 - 1.0) / expected, (4.0 - 1.0) / expected]]
    assert torch.allclose(s.grad, torch.tensor(manual, dtype=torch.float64))
