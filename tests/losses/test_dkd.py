"""DKD vs a python-loop float64 reference written from the paper's definitions."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.dkd import NEEDS, dkd, dkd_parts, dkd_warmup
from kdgraph.losses.logits import kl_div


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def ref_dkd(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, T: float) -> float:
    B, K = zs.shape
    tckd = nckd = 0.0
    for b in range(B):
        ps = softmax([v / T for v in zs[b].tolist()])
        pt = softmax([v / T for v in zt[b].tolist()])
        c = int(y[b])
        tckd += kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        # renormalise the K-1 non-target probabilities (the paper's p_hat)
        qs = [ps[k] / (1 - ps[c]) for k in range(K) if k != c]
        qt = [pt[k] / (1 - pt[c]) for k in range(K) if k != c]
        nckd += kl(qt, qs)
    return T * T * (alpha * tckd + beta * nckd) / B


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(16)


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (1.0, 1.0, 1.0), (0.5, 2.0, 2.0)])
def test_against_reference(gen: torch.Generator, alpha: float, beta: float, T: float) -> None:
    zs = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 2
    zt = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 2
    y = torch.tensor([0, 5, 2, 2, 3])
    got = dkd(zs, zt, alpha=alpha, beta=beta, temperature=T, target=y)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_dkd(zs, zt, y, alpha, beta, T), rel=1e-12)
    got32 = dkd(zs.float(), zt.float(), alpha=alpha, beta=beta, temperature=T, target=y)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(ref_dkd(zs, zt, y, alpha, beta, T), rel=1e-5)


def test_parts_are_alpha_and_beta_terms(gen: torch.Generator) -> None:
    zs = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    zt = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, 0, 3])
    tckd, nckd = dkd_parts(zs, zt, temperature=2.0, target=y)
    assert tckd.item() == pytest.approx(ref_dkd(zs, zt, y, 1.0, 0.0, 2.0), rel=1e-12)
    assert nckd.item() == pytest.approx(ref_dkd(zs, zt, y, 0.0, 1.0, 2.0), rel=1e-12)


def test_kd_decomposition(gen: torch.Generator) -> None:
    # the paper's Eq. 1, per sample: KD = TCKD + (1 - p_y^t) NCKD; checked one sample at a time
    zs = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    zt = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    y = torch.tensor([6, 1, 0, 3])
    T = 3.0
    for b in range(4):
        tckd, nckd = dkd_parts(zs[b : b + 1], zt[b : b + 1], temperature=T, target=y[b : b + 1])
        pt_y = softmax([v / T for v in zt[b].tolist()])[int(y[b])]
        kd = kl_div(zs[b : b + 1], zt[b : b + 1], temperature=T)
        assert kd.item() == pytest.approx(tckd.item() + (1 - pt_y) * nckd.item(), rel=1e-10)


def test_hand_checked_two_classes() -> None:
    # K = 2: NCKD is a KL between two one-point distributions, i.e. 0; TCKD is the binary KL.
    # student [0, 0] -> b^s = [1/2, 1/2]; teacher [ln 3, 0] at T = 1 -> b^t = [3/4, 1/4]
    zs = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    tckd, nckd = dkd_parts(zs, zt, temperature=1.0, target=torch.tensor([0]))
    assert nckd.item() == 0.0
    assert tckd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)


def test_identical_logits_give_zero(gen: torch.Generator) -> None:
    z = torch.randn(4, 5, generator=gen)
    assert dkd(z, z.clone(), target=torch.tensor([0, 1, 2, 3])).item() == pytest.approx(0.0, abs=1e-6)


def test_extreme_logits_stay_finite() -> None:
    # the target probability underflows float32 (log 0 in a probability-space implementation)
    zs = torch.tensor([[-200.0, 200.0, 0.0]], requires_grad=True)
    zt = torch.tensor([[200.0, -200.0, 0.0]])
    out = dkd(zs, zt, temperature=1.0, target=torch.tensor([0]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(zs.grad).all()


def test_gradcheck(gen: torch.Generator) -> None:
    zs = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda a, b: dkd(a, b, target=y), (zs, zt))


def test_bf16_autocast(gen: torch.Generator) -> None:
    zs = torch.randn(4, 10, generator=gen).bfloat16().requires_grad_(True)
    zt = torch.randn(4, 10, generator=gen).bfloat16()
    y = torch.tensor([1, 2, 3, 9])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = dkd(zs, zt, target=y)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_dkd(zs.detach().double(), zt.double(), y, 1.0, 8.0, 4.0), rel=1e-4)
    out.backward()
    assert zs.grad is not None and zs.grad.dtype == torch.bfloat16


def test_validation() -> None:
    z = torch.zeros(2, 3)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="labels"):
        dkd(z, z)
    with pytest.raises(ValueError, match="soft targets"):
        dkd(z, z, target=torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        dkd(z, z, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="equal shape"):
        dkd(z, torch.zeros(2, 4), target=y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd(torch.zeros(2, 1), torch.zeros(2, 1), target=y)
    with pytest.raises(ValueError, match="temperature"):
        dkd(z, z, target=y, temperature=0.0)


def test_warmup() -> None:
    assert dkd_warmup(1, 20) == pytest.approx(0.05)
    assert dkd_warmup(10, 20) == pytest.approx(0.5)
    assert dkd_warmup(20, 20) == 1.0 and dkd_warmup(240, 20) == 1.0
    assert dkd_warmup(2.5, 5) == pytest.approx(0.5)
    assert dkd_warmup(0, 0) == 1.0
    with pytest.raises(ValueError):
        dkd_warmup(-1)


def test_needs_declared() -> None:
    assert set(NEEDS) == {"dkd"} and any("labels" in n for n in NEEDS["dkd"])
