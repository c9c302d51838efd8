"""DIST vs a python-loop float64 reference of the paper's Pearson relations."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.dist_kd import NEEDS, dist_kd


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (na * nb + eps)


def ref_dist(zs: torch.Tensor, zt: torch.Tensor, beta: float, gamma: float, T: float) -> float:
    B, K = zs.shape
    ys = [softmax([v / T for v in row]) for row in zs.tolist()]
    yt = [softmax([v / T for v in row]) for row in zt.tolist()]
    inter = 1 - sum(pearson(ys[b], yt[b]) for b in range(B)) / B
    cols = lambda y, k: [y[b][k] for b in range(B)]  # noqa: E731
    intra = 1 - sum(pearson(cols(ys, k), cols(yt, k)) for k in range(K)) / K
    return T * T * (beta * inter + gamma * intra)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(22)


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0), (0.0, 1.0, 1.0)])
def test_against_reference(gen: torch.Generator, beta: float, gamma: float, T: float) -> None:
    zs = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2
    zt = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2
    got = dist_kd(zs, zt, beta=beta, gamma=gamma, temperature=T)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_dist(zs, zt, beta, gamma, T), rel=1e-10)
    got32 = dist_kd(zs.float(), zt.float(), beta=beta, gamma=gamma, temperature=T)
    assert got32.item() == pytest.approx(ref_dist(zs, zt, beta, gamma, T), rel=1e-4, abs=1e-6)


def test_hand_checked_values() -> None:
    # identical logits: both correlations are 1 -> 0 (eps, added to the small norms of probabilities, made tiny)
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 2.0]], dtype=torch.float64)
    assert dist_kd(z, z.clone(), eps=1e-15).item() == pytest.approx(0.0, abs=1e-10)
    # with the default eps = 1e-8 each correlation is n / (n + eps) with n the product of the centred norms
    p = torch.softmax(z, dim=1)
    n_rows = [(p[b] - p[b].mean()).norm().item() ** 2 for b in range(2)]
    n_cols = [(p[:, k] - p[:, k].mean()).norm().item() ** 2 for k in range(3)]
    want = (1 - sum(n / (n + 1e-8) for n in n_rows) / 2) + (1 - sum(n / (n + 1e-8) for n in n_cols) / 3)
    assert dist_kd(z, z.clone()).item() == pytest.approx(want, rel=1e-9)
    # a batch of one: the intra-class relation has no spread (rho = 0/eps = 0), so L = T^2 gamma (1 - 0)
    one = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    assert dist_kd(one, one.clone(), gamma=1.0, temperature=2.0).item() == pytest.approx(4.0, rel=1e-6)
    # two classes: softmax rows are [p, 1-p], so every centred pair is +-(p - 1/2)(1, -1): rho = sign
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    zt = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    # inter: both rows anti-correlated -> 1 - (-1) = 2; intra: columns anti-correlated -> 2
    assert dist_kd(zs, zt, eps=1e-15).item() == pytest.approx(4.0, rel=1e-12)


def test_inter_class_ignores_logit_shift(gen: torch.Generator) -> None:
    # softmax ignores a per-row shift of the logits, so the inter-class correlation is 1: inter loss 0
    zs = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    shift = torch.randn(4, 1, generator=gen, dtype=torch.float64)
    assert dist_kd(zs, zs + shift, gamma=0.0, eps=1e-15).item() == pytest.approx(0.0, abs=1e-12)


def test_gradcheck(gen: torch.Generator) -> None:
    zs = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: dist_kd(a, zt, temperature=2.0), (zs,))


def test_batch_of_one_gradient_is_finite() -> None:
    zs = torch.randn(1, 5, requires_grad=True)
    dist_kd(zs, torch.randn(1, 5)).backward()
    assert torch.isfinite(zs.grad).all()


def test_bf16_autocast(gen: torch.Generator) -> None:
    zs = torch.randn(8, 10, generator=gen).bfloat16().requires_grad_(True)
    zt = torch.randn(8, 10, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = dist_kd(zs, zt, temperature=4.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_dist(zs.detach().double(), zt.double(), 1.0, 1.0, 4.0), rel=1e-4)
    out.backward()
    assert zs.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        dist_kd(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="equal shape"):
        dist_kd(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="temperature"):
        dist_kd(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


def test_needs_declared() -> None:
    assert set(NEEDS) == {"dist_kd"}
