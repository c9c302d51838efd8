"""RKD vs python loops over pairs and triplets in float64."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.rkd import NEEDS, pairwise_distances, rkd, rkd_angle, rkd_distance


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(x.shape[0], -1).tolist()


def ref_dist_potential(f: list[list[float]]) -> list[list[float]]:
    B = len(f)
    dist = lambda i, j: math.sqrt(sum((a - b) ** 2 for a, b in zip(f[i], f[j])))  # noqa: E731
    d = [[dist(i, j) if i != j else 0.0 for j in range(B)] for i in range(B)]
    mu = sum(d[i][j] for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
    return [[v / mu for v in row] for row in d]


def ref_angle_potential(f: list[list[float]]) -> list[float]:
    B = len(f)

    def unit(i: int, j: int) -> list[float]:  # e(f_j - f_i)
        v = [b - a for a, b in zip(f[i], f[j])]
        n = math.sqrt(sum(c * c for c in v))
        return [c / n for c in v] if n > 0 else [0.0] * len(v)

    return [sum(a * b for a, b in zip(unit(i, j), unit(i, k))) for i in range(B) for j in range(B) for k in range(B)]


def ref_rkd(s: torch.Tensor, t: torch.Tensor, wd: float, wa: float) -> tuple[float, float, float]:
    fs, ft = rows(s), rows(t)
    Ds, Dt = ref_dist_potential(fs), ref_dist_potential(ft)
    B = len(fs)
    ld = sum(huber(Ds[i][j] - Dt[i][j]) for i in range(B) for j in range(B)) / B**2
    As, At = ref_angle_potential(fs), ref_angle_potential(ft)
    la = sum(huber(a - b) for a, b in zip(As, At)) / B**3
    return ld, la, wd * ld + wa * la


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(28)


@pytest.mark.parametrize(("s_shape", "t_shape"), [((4, 3), (4, 3)), ((5, 2, 2), (5, 7))])
def test_against_reference(gen: torch.Generator, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> None:
    s = torch.randn(*s_shape, generator=gen, dtype=torch.float64)
    t = torch.randn(*t_shape, generator=gen, dtype=torch.float64) * 3
    ld, la, total = ref_rkd(s, t, 25.0, 50.0)
    assert rkd_distance(s, t).item() == pytest.approx(ld, rel=1e-10)
    assert rkd_angle(s, t).item() == pytest.approx(la, rel=1e-10)
    got = rkd(s, t)
    assert got.ndim == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(total, rel=1e-10)
    assert rkd(s.float(), t.float()).item() == pytest.approx(total, rel=1e-4)
    assert rkd(s, t, distance_weight=1.0, angle_weight=2.0).item() == pytest.approx(ld + 2 * la, rel=1e-10)


def test_hand_checked() -> None:
    # three collinear points 0, 1, 2 (distances 1, 1, 2; mean over the 6 ordered pairs 4/3)
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    d = pairwise_distances(x)
    torch.testing.assert_close(d, torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=torch.float64))
    # a similar triangle (scaled, shifted) has the same distance and angle potentials
    assert rkd(x, 3.0 * x + 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # the mirror image (x -> -x) keeps the distances; in 1-D, every angle cosine is +-1 and mirroring keeps them
    assert rkd(x, -x).item() == pytest.approx(0.0, abs=1e-12)
    # distances 1,1,2 vs 1,1,1 (equilateral in 2-D): potentials d/mu: 3/4,3/4,3/2 vs 1,1,1;
    # per ordered pair huber: (1/4)^2/2 (x4) and (1/2)^2/2 (x2), diagonal 0 -> (4/32 + 2/8) / 9
    tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    assert rkd_distance(x, tri).item() == pytest.approx((4 / 32 + 2 / 8) / 9, rel=1e-12)


def test_duplicate_samples_are_finite(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    s[1] = s[0]
    s.requires_grad_(True)
    out = rkd(s, torch.randn(4, 5, generator=gen, dtype=torch.float64))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_gradcheck(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: rkd(a, t), (s,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    s = torch.randn(6, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(6, 8, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = rkd(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_rkd(s.detach().double(), t.double(), 25.0, 50.0)[2], rel=1e-4)
    out.backward()
    assert s.grad is not None


def test_validation() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        rkd(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch sizes differ"):
        rkd(torch.zeros(3, 3), torch.zeros(4, 3))


def test_needs_declared() -> None:
    assert set(NEEDS) == {"rkd", "rkd_distance", "rkd_angle"}
