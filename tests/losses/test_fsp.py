"""FSP vs explicit sums over positions and channels in float64."""

from __future__ import annotations

import pytest
import torch

from kdgraph.losses.fsp import NEEDS, fsp, fsp_matrix


def ref_flow(a: torch.Tensor, b: torch.Tensor, n: int) -> list[list[list[float]]]:
    """G[n][i][j] = (1/HW) sum_{h,w} a[n,i,h,w] b[n,j,h,w] with loops (equal grids)."""
    C1, H, W = a.shape[1:]
    C2 = b.shape[1]
    flow = []
    for i in range(C1):
        row = []
        for j in range(C2):
            total = sum(float(a[n, i, h, w]) * float(b[n, j, h, w]) for h in range(H) for w in range(W))
            row.append(total / (H * W))
        flow.append(row)
    return flow


def ref_fsp(s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> float:
    total = 0.0
    for n in range(s1.shape[0]):
        gs, gt = ref_flow(s1, s2, n), ref_flow(t1, t2, n)
        total += sum((x - y) ** 2 for rs, rt in zip(gs, gt) for x, y in zip(rs, rt))
    return total / s1.shape[0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(18)


def test_against_reference(gen: torch.Generator) -> None:
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    s1, s2, t1, t2 = r(3, 2, 4, 4), r(3, 5, 4, 4), r(3, 2, 4, 4), r(3, 5, 4, 4)
    got = fsp(s1, s2, t1, t2)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_fsp(s1, s2, t1, t2), rel=1e-12)
    got32 = fsp(s1.float(), s2.float(), t1.float(), t2.float())
    assert got32.item() == pytest.approx(ref_fsp(s1, s2, t1, t2), rel=1e-5)


def test_hand_checked_flow() -> None:
    # one channel each on a 1x2 grid: a = [1, 2], b = [3, 4] -> G = (3 + 8) / 2 = 5.5
    a = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)
    b = torch.tensor([[[[3.0, 4.0]]]], dtype=torch.float64)
    assert fsp_matrix(a, b).item() == pytest.approx(5.5)
    # teacher flow 5.5, student flow of zeros: loss 5.5^2
    assert fsp(torch.zeros_like(a), b, a, b).item() == pytest.approx(30.25)
    assert fsp(a, b, a.clone(), b.clone()).item() == 0.0


def test_different_grids_pool_the_larger_map(gen: torch.Generator) -> None:
    a = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 4, 4, 4, generator=gen, dtype=torch.float64)
    # average of each 2x2 block, written out
    pooled = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    for h in range(4):
        for w in range(4):
            pooled[:, :, h, w] = (a[:, :, 2 * h, 2 * w] + a[:, :, 2 * h + 1, 2 * w] + a[:, :, 2 * h, 2 * w + 1]
                                  + a[:, :, 2 * h + 1, 2 * w + 1]) / 4
    want = [ref_flow(pooled, b, n) for n in range(2)]
    got = fsp_matrix(a, b)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                assert got[n, i, j].item() == pytest.approx(want[n][i][j], rel=1e-12)


def test_gradcheck(gen: torch.Generator) -> None:
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    s1, s2 = r(2, 2, 3, 3).requires_grad_(True), r(2, 3, 3, 3).requires_grad_(True)
    t1, t2 = r(2, 2, 3, 3), r(2, 3, 3, 3)
    assert torch.autograd.gradcheck(lambda a, b: fsp(a, b, t1, t2), (s1, s2))


def test_bf16_autocast(gen: torch.Generator) -> None:
    r = lambda *shape: torch.randn(*shape, generator=gen).bfloat16()  # noqa: E731
    s1, s2, t1, t2 = r(2, 2, 4, 4).requires_grad_(True), r(2, 3, 4, 4), r(2, 2, 4, 4), r(2, 3, 4, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = fsp(s1, s2, t1, t2)
    assert out.dtype == torch.float32
    want = ref_fsp(s1.detach().double(), s2.double(), t1.double(), t2.double())
    assert out.item() == pytest.approx(want, rel=1e-4)
    out.backward()
    assert s1.grad is not None


def test_validation() -> None:
    m = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"flow is \(3, 5\)"):
        fsp(m, torch.zeros(2, 5, 4, 4), m, torch.zeros(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fsp(torch.zeros(2, 3), m, m, m)
    with pytest.raises(ValueError, match="batch"):
        fsp(m, torch.zeros(3, 3, 4, 4), m, m)


def test_needs_declared() -> None:
    assert set(NEEDS) == {"fsp"} and any("two taps" in n for n in NEEDS["fsp"])
