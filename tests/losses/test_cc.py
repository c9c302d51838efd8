"""CC vs an explicit Taylor sum in float64; the expansion converges to the Gaussian RBF for unit vectors."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.cc import NEEDS, cc, rbf_taylor_kernel


def ref_C(x: torch.Tensor, gamma: float, order: int) -> list[list[float]]:
    f = x.reshape(x.shape[0], -1).tolist()
    C = []
    for fi in f:
        row = []
        for fj in f:
            dot = sum(a * b for a, b in zip(fi, fj))
            series = sum((2 * gamma) ** p / math.factorial(p) * dot**p for p in range(order + 1))
            row.append(math.exp(-2 * gamma) * series)
        C.append(row)
    return C


def ref_cc(s: torch.Tensor, t: torch.Tensor, gamma: float, order: int) -> float:
    Cs, Ct = ref_C(s, gamma, order), ref_C(t, gamma, order)
    B = len(Cs)
    return sum((Ct[i][j] - Cs[i][j]) ** 2 for i in range(B) for j in range(B)) / B**2


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(27)


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 0), (0.2, 4)])
def test_against_reference(gen: torch.Generator, gamma: float, order: int) -> None:
    s = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    got = cc(s, t, gamma=gamma, order=order)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_cc(s, t, gamma, order), rel=1e-12, abs=1e-15)
    assert cc(s.float(), t.float(), gamma=gamma, order=order).item() == pytest.approx(
        ref_cc(s, t, gamma, order), rel=1e-5, abs=1e-9
    )


def test_unsquared_is_the_norm_itself(gen: torch.Generator) -> None:
    """squared=False: (1/B^2) ||C^t - C^s||_F, torchdistill's form; B^2 times its square is the squared form."""
    s = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    Cs, Ct = ref_C(s, 0.4, 2), ref_C(t, 0.4, 2)
    norm = math.sqrt(sum((Ct[i][j] - Cs[i][j]) ** 2 for i in range(5) for j in range(5)))
    got = cc(s, t, squared=False)
    assert got.item() == pytest.approx(norm / 25, rel=1e-12)
    assert cc(s, t).item() == pytest.approx(25 * got.item() ** 2, rel=1e-12)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    out = cc(x, x.detach().clone(), squared=False)  # equal kernels: 0, with a zero (not NaN) gradient
    out.backward()
    assert out.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    y = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: cc(a, t[:4], squared=False), (y,))


def test_hand_checked() -> None:
    # orthonormal pair, order 1, gamma 0.5: C = e^-1 [[1 + 1, 1 + 0], [1, 2]] = e^-1 [[2, 1], [1, 2]]
    x = torch.eye(2, dtype=torch.float64)
    want = math.exp(-1.0) * torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(rbf_taylor_kernel(x, gamma=0.5, order=1), want)
    # the same batch in both models: 0; order 0 is a constant kernel: always 0
    assert cc(x, x.clone()).item() == 0.0
    assert cc(x, 5.0 * x, order=0).item() == 0.0


def test_converges_to_rbf_for_unit_vectors(gen: torch.Generator) -> None:
    x = torch.nn.functional.normalize(torch.randn(4, 6, generator=gen, dtype=torch.float64), dim=1)
    C = rbf_taylor_kernel(x, gamma=0.4, order=12)
    for i in range(4):
        for j in range(4):
            d2 = sum((a - b) ** 2 for a, b in zip(x[i].tolist(), x[j].tolist()))
            assert C[i, j].item() == pytest.approx(math.exp(-0.4 * d2), rel=1e-10)


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: cc(a, t), (s,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.nn.functional.normalize(torch.randn(8, 6, generator=gen), dim=1).bfloat16().requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=1).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = cc(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_cc(s.detach().double(), t.double(), 0.4, 2), rel=1e-4)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        cc(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="gamma"):
        cc(torch.zeros(3, 4), torch.zeros(3, 4), gamma=0.0)
    with pytest.raises(ValueError, match="order"):
        cc(torch.zeros(3, 4), torch.zeros(3, 4), order=-1)


def test_needs_declared() -> None:
    assert set(NEEDS) == {"cc"}
