"""AB hinge vs an element-by-element float64 reference."""

from __future__ import annotations

import pytest
import torch

from kdgraph.losses.ab import NEEDS, ab


def ref_ab(s: torch.Tensor, t: torch.Tensor, m: float) -> float:
    total = 0.0
    for a, b in zip(s.flatten().tolist(), t.flatten().tolist()):
        if b <= 0 and a > -m:
            total += (a + m) ** 2  # teacher off: the student should be below -m
        elif b > 0 and a <= m:
            total += (a - m) ** 2  # teacher on: the student should be above +m
    return total / s.shape[0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(19)


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_against_reference(gen: torch.Generator, margin: float) -> None:
    s = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64)
    got = ab(s, t, margin=margin)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ab(s, t, margin), rel=1e-12)
    assert ab(s.float(), t.float(), margin=margin).item() == pytest.approx(ref_ab(s, t, margin), rel=1e-5)


def test_hand_checked() -> None:
    # margin 1: (0.5 + 1)^2 [off, above -1] + 0 [off, below -1] + 0 [on, above 1] + (0 - 1)^2 [on, below 1]
    s = torch.tensor([[[[0.5, -2.0, 2.0, 0.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[-1.0, -1.0, 1.0, 1.0]]]], dtype=torch.float64)
    assert ab(s, t).item() == pytest.approx(3.25)
    # summed over positions, averaged over the batch
    assert ab(torch.cat([s, s]), torch.cat([t, t])).item() == pytest.approx(3.25)


def test_gradient_pushes_across_the_boundary() -> None:
    s = torch.tensor([[[[0.5]], [[0.0]]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[[-1.0]], [[1.0]]]], dtype=torch.float64)
    ab(s, t).backward()
    assert s.grad[0, 0].item() == pytest.approx(3.0)  # d/ds (s + 1)^2 = 2 * 1.5: descend -> s decreases
    assert s.grad[0, 1].item() == pytest.approx(-2.0)  # d/ds (s - 1)^2 = 2 * (0 - 1): descend -> s increases


def test_no_gradient_to_teacher(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 2, 2, generator=gen, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, generator=gen, requires_grad=True)
    ab(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 4, 4, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = ab(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ab(s.detach().double(), t.double(), 1.0), rel=1e-5)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        ab(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="grids differ"):
        ab(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="margin"):
        ab(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), margin=0.0)


def test_needs_declared() -> None:
    assert any("pre-stage" in n for n in NEEDS["ab"]) and any("pre-activation" in n for n in NEEDS["ab"])
