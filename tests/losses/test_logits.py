"""Logit losses vs plain python / numpy float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdgraph.losses import cross_entropy, kl_div, soft_cross_entropy


def _softmax_row(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    tot = sum(e)
    return [v / tot for v in e]


def ref_ce(logits: np.ndarray, q: np.ndarray) -> float:
    """-(1/B) sum_b sum_k q log softmax, with explicit loops."""
    total = 0.0
    for b in range(logits.shape[0]):
        p = _softmax_row([float(v) for v in logits[b]])
        total -= sum(float(q[b, k]) * math.log(p[k]) for k in range(len(p)))
    return total / logits.shape[0]


def ref_kl(zs: np.ndarray, zt: np.ndarray, T: float, t_squared: bool) -> float:
    total = 0.0
    for b in range(zs.shape[0]):
        ps = _softmax_row([float(v) / T for v in zs[b]])
        pt = _softmax_row([float(v) / T for v in zt[b]])
        total += sum(pt[k] * math.log(pt[k] / ps[k]) for k in range(len(ps)))
    total /= zs.shape[0]
    return total * T * T if t_squared else total


def one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    q = np.zeros((len(idx), k))
    for b, c in enumerate(idx):
        q[b, c] = 1.0
    return q


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_hard_targets(gen: torch.Generator, dtype: torch.dtype, smoothing: float) -> None:
    z = torch.randn(5, 4, generator=gen, dtype=dtype) * 3
    y = torch.tensor([0, 3, 1, 1, 2])
    q = one_hot(y.numpy(), 4) * (1 - smoothing) + smoothing / 4
    got = cross_entropy(z, y, label_smoothing=smoothing)
    assert got.ndim == 0 and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert got.item() == pytest.approx(ref_ce(z.double().numpy(), q), rel=tol, abs=tol)


def test_cross_entropy_soft_targets_mixup(gen: torch.Generator) -> None:
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    a, b, lam = np.array([0, 1, 2, 3, 4, 0]), np.array([4, 4, 1, 0, 2, 3]), 0.3
    q = lam * one_hot(a, 5) + (1 - lam) * one_hot(b, 5)
    got = cross_entropy(z, torch.from_numpy(q)).item()
    assert got == pytest.approx(ref_ce(z.numpy(), q), rel=1e-12)
    # mixup identity: CE(lam*a + (1-lam)*b) = lam*CE(a) + (1-lam)*CE(b)
    split = lam * cross_entropy(z, torch.from_numpy(a)) + (1 - lam) * cross_entropy(z, torch.from_numpy(b))
    assert got == pytest.approx(split.item(), rel=1e-12)
    sm = cross_entropy(z, torch.from_numpy(q), label_smoothing=0.2).item()
    assert sm == pytest.approx(ref_ce(z.numpy(), 0.8 * q + 0.2 / 5), rel=1e-12)


def test_cross_entropy_soft_targets_float32_target_with_float64_logits(gen: torch.Generator) -> None:
    z = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    q = torch.softmax(torch.randn(3, 4, generator=gen), dim=1)  # float32 targets
    assert cross_entropy(z, q).item() == pytest.approx(ref_ce(z.numpy(), q.double().numpy()), rel=1e-6)


def test_cross_entropy_validation() -> None:
    z = torch.zeros(3, 4)
    with pytest.raises(ValueError):
        cross_entropy(z, torch.zeros(3, 5))
    with pytest.raises(ValueError):
        cross_entropy(z, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        cross_entropy(z, torch.zeros(3, dtype=torch.long), label_smoothing=1.5)


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("t_squared", [True, False])
def test_kl_div_reference(gen: torch.Generator, T: float, t_squared: bool) -> None:
    zs = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 2
    zt = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 2
    got = kl_div(zs, zt, temperature=T, t_squared=t_squared).item()
    assert got == pytest.approx(ref_kl(zs.numpy(), zt.numpy(), T, t_squared), rel=1e-12)
    got32 = kl_div(zs.float(), zt.float(), temperature=T, t_squared=t_squared).item()
    assert got32 == pytest.approx(ref_kl(zs.numpy(), zt.numpy(), T, t_squared), rel=1e-4)


def test_kl_div_t_squared_scaling_and_zero(gen: torch.Generator) -> None:
    zs, zt = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    a = kl_div(zs, zt, temperature=3.0, t_squared=True)
    b = kl_div(zs, zt, temperature=3.0, t_squared=False)
    assert a.item() == pytest.approx(9.0 * b.item(), rel=1e-6)
    assert kl_div(zt, zt).item() == pytest.approx(0.0, abs=1e-7)
    # shift invariance of softmax
    assert kl_div(zs + 7.0, zt - 2.0).item() == pytest.approx(kl_div(zs, zt).item(), rel=1e-4)


def test_kl_div_extreme_logits_finite() -> None:
    zs = torch.tensor([[1000.0, -1000.0, 0.0]])
    zt = torch.tensor([[-1000.0, 1000.0, 0.0]])
    out = kl_div(zs, zt, temperature=1.0)
    assert torch.isfinite(out) and out.item() == pytest.approx(2000.0, rel=1e-5)


def test_teacher_not_detached() -> None:
    zs = torch.randn(2, 3, requires_grad=True)
    zt = torch.randn(2, 3, requires_grad=True)
    kl_div(zs, zt).backward()
    assert zt.grad is not None and zs.grad is not None


def test_soft_cross_entropy_reference(gen: torch.Generator) -> None:
    zs = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    zt = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    T = 2.0
    q = np.array([_softmax_row([float(v) / T for v in row]) for row in zt.numpy()])
    got = soft_cross_entropy(zs, zt, temperature=T).item()
    assert got == pytest.approx(T * T * ref_ce(zs.numpy() / T, q), rel=1e-12)
    entropy = -sum(float(p) * math.log(p) for row in q for p in row) / 4
    assert got == pytest.approx(kl_div(zs, zt, temperature=T).item() + T * T * entropy, rel=1e-12)
    no_t2 = soft_cross_entropy(zs, zt, temperature=T, t_squared=False).item()
    assert no_t2 == pytest.approx(got / 4, rel=1e-12)


def test_soft_ce_and_kl_same_student_gradient(gen: torch.Generator) -> None:
    zt = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    zs1 = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    zs2 = zs1.detach().clone().requires_grad_(True)
    kl_div(zs1, zt).backward()
    soft_cross_entropy(zs2, zt).backward()
    torch.testing.assert_close(zs1.grad, zs2.grad)


@pytest.mark.parametrize("fn", [kl_div, soft_cross_entropy])
def test_logit_losses_validation(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


def test_gradcheck(gen: torch.Generator) -> None:
    zs = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 3])
    q = torch.softmax(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(lambda a, b: kl_div(a, b, temperature=2.0), (zs, zt))
    assert torch.autograd.gradcheck(lambda a, b: soft_cross_entropy(a, b, temperature=2.0), (zs, zt))
    assert torch.autograd.gradcheck(lambda a: cross_entropy(a, y, label_smoothing=0.1), (zs,))
    assert torch.autograd.gradcheck(lambda a: cross_entropy(a, q), (zs,))


def test_bf16_autocast_inputs(gen: torch.Generator) -> None:
    zs = torch.randn(4, 10, generator=gen).bfloat16().requires_grad_(True)
    zt = torch.randn(4, 10, generator=gen).bfloat16()
    y = torch.tensor([1, 2, 3, 9])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        k = kl_div(zs, zt)
        c = cross_entropy(zs, y)
        sc = soft_cross_entropy(zs, zt)
    assert k.dtype == c.dtype == sc.dtype == torch.float32
    zs64, zt64 = zs.detach().double().numpy(), zt.double().numpy()
    assert k.item() == pytest.approx(ref_kl(zs64, zt64, 4.0, True), rel=1e-4)
    assert c.item() == pytest.approx(ref_ce(zs64, one_hot(y.numpy(), 10)), rel=1e-4)
    (k + c + sc).backward()
    assert zs.grad is not None and zs.grad.dtype == torch.bfloat16 and torch.isfinite(zs.grad.float()).all()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=6, max_size=6),
    st.lists(st.floats(-20, 20), min_size=6, max_size=6),
    st.floats(0.5, 8.0),
)
def test_kl_property_nonnegative_and_matches(zs: list[float], zt: list[float], T: float) -> None:
    a = torch.tensor(zs, dtype=torch.float64).reshape(2, 3)
    b = torch.tensor(zt, dtype=torch.float64).reshape(2, 3)
    got = kl_div(a, b, temperature=T).item()
    assert got >= -1e-12
    assert got == pytest.approx(ref_kl(a.numpy(), b.numpy(), T, True), rel=1e-9, abs=1e-9)
