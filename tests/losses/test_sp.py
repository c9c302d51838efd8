"""SP vs explicit sums in float64."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.sp import NEEDS, similarity_matrix, sp


def ref_G(x: torch.Tensor) -> list[list[float]]:
    f = x.reshape(x.shape[0], -1).tolist()
    G = [[sum(a * b for a, b in zip(fi, fj)) for fj in f] for fi in f]
    return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in G]


def ref_sp(s: torch.Tensor, t: torch.Tensor) -> float:
    Gs, Gt = ref_G(s), ref_G(t)
    B = len(Gs)
    return sum((Gt[i][j] - Gs[i][j]) ** 2 for i in range(B) for j in range(B)) / B**2


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(26)


@pytest.mark.parametrize(("s_shape", "t_shape"), [((5, 4), (5, 4)), ((4, 3, 2, 2), (4, 7)), ((3, 2, 5), (3, 2, 2, 2))])
def test_against_reference(gen: torch.Generator, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> None:
    s = torch.randn(*s_shape, generator=gen, dtype=torch.float64)
    t = torch.randn(*t_shape, generator=gen, dtype=torch.float64)
    got = sp(s, t)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_sp(s, t), rel=1e-12)
    assert sp(s.float(), t.float()).item() == pytest.approx(ref_sp(s, t), rel=1e-5)


def test_hand_checked() -> None:
    # G^s = I; G^t = all ones -> rows (1/sqrt2, 1/sqrt2): 2 (1 - 1/sqrt2)^2 + 2 (1/2) = 4 - 2 sqrt2, / B^2 = 4
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert sp(s, t).item() == pytest.approx((4 - 2 * math.sqrt(2)) / 4, rel=1e-12)
    torch.testing.assert_close(similarity_matrix(s), torch.eye(2, dtype=torch.float64))
    assert sp(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-15)  # scale-free


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: sp(a, t), (s,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(8, 4, 2, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(8, 16, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = sp(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_sp(s.detach().double(), t.double()), rel=1e-4)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        sp(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(B, \.\.\.\)"):
        sp(torch.zeros(3), torch.zeros(3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"sp"}
