"""PKD: the standardised MSE against an element-by-element reference, its Pearson form, and the invariances that make
it PKD (per-channel affine rescaling of either side, with statistics over the batch and the grid together)."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses import get_loss
from kdgraph.losses.pkd import NEEDS, pkd, pkd_standardise


def channel_values(x: torch.Tensor, c: int) -> list[float]:
    """Every value of channel c, over the batch and the grid."""
    return [v for b in range(x.shape[0]) for v in x[b, c].flatten().tolist()]


def standardised(values: list[float], eps: float) -> list[float]:
    m = len(values)
    mean = sum(values) / m
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))  # unbiased, as torch.std
    return [(v - mean) / (std + eps) for v in values]


def ref_pkd(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> float:
    total, count = 0.0, 0
    for c in range(s.shape[1]):
        for a, y in zip(standardised(channel_values(s, c), eps), standardised(channel_values(t, c), eps)):
            total += (a - y) ** 2
            count += 1
    return total / count / 2


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(22)


def test_against_reference(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    t = 5 * torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64) + 2
    got = pkd(s, t)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_pkd(s, t), rel=1e-12)
    assert pkd(s.float(), t.float()).item() == pytest.approx(ref_pkd(s, t), rel=1e-5)
    assert pkd(s, t, eps=0.5).item() == pytest.approx(ref_pkd(s, t, 0.5), rel=1e-12)


def test_standardise_is_per_channel_over_batch_and_grid(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) * 3 + 1
    z = pkd_standardise(x, eps=0.0)
    assert z.shape == (3, 32)
    for c in range(3):
        assert z[c].tolist() == pytest.approx(standardised(channel_values(x, c), 0.0), rel=1e-12, abs=1e-12)
        assert z[c].mean().item() == pytest.approx(0.0, abs=1e-12)
        assert z[c].std().item() == pytest.approx(1.0, rel=1e-12)


def test_pearson_form(gen: torch.Generator) -> None:
    # (1/2) mean (z_s - z_t)^2 = (M - 1)/M * mean_c (1 - r_c) when eps -> 0, r_c the Pearson r of channel c
    s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    t = s + 0.7 * torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    m = 2 * 4 * 5
    rs = [pearson(channel_values(s, c), channel_values(t, c)) for c in range(3)]
    want = (m - 1) / m * sum(1 - r for r in rs) / 3
    assert pkd(s, t, eps=1e-300).item() == pytest.approx(want, rel=1e-12)
    assert pkd(s, t).item() == pytest.approx(want, rel=1e-5)  # the default eps moves it by about eps / std


def test_invariances(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = 1e-300
    base = pkd(s, t, eps=eps).item()
    assert pkd(t, t).item() == pytest.approx(0.0, abs=1e-20)
    # a positive scale and any offset per channel, on either side: the magnitude is not imitated
    scale = torch.tensor([0.01, 3.0, 250.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    offset = torch.tensor([-4.0, 0.5, 100.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    assert pkd(scale * s + offset, t, eps=eps).item() == pytest.approx(base, rel=1e-10)
    assert pkd(s, scale * t - offset, eps=eps).item() == pytest.approx(base, rel=1e-10)
    # a negative scale flips the correlation of that channel: r -> -r
    m = 2 * 16
    rs = [pearson(channel_values(s, c), channel_values(t, c)) for c in range(3)]
    flipped = s.clone()
    flipped[:, 1] *= -2.0
    want = (m - 1) / m * ((1 - rs[0]) + (1 + rs[1]) + (1 - rs[2])) / 3
    assert pkd(flipped, t, eps=eps).item() == pytest.approx(want, rel=1e-12)
    assert pkd(-t, t, eps=eps).item() == pytest.approx(2 * (m - 1) / m, rel=1e-12)  # r = -1 everywhere
    # the statistics are the batch's: rescaling one sample alone is not invariant (per-sample statistics would be)
    one = s.clone()
    one[0] *= 5.0
    assert pkd(one, t, eps=eps).item() != pytest.approx(base, rel=1e-3)


def test_gradients_and_bf16(gen: torch.Generator) -> None:
    s = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: pkd(x, t), (s,))
    sb = s.detach().bfloat16().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = pkd(sb, t.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_pkd(sb.detach().double(), t.bfloat16().double()), rel=1e-5)


def test_validation() -> None:
    z = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="widths differ"):
        pkd(z, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="grids differ"):
        pkd(z, torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 2 values"):
        pkd(torch.randn(1, 3, 1, 1), torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="eps"):
        pkd(z, z, eps=0.0)


def test_record() -> None:
    record = get_loss("pkd")
    assert record.fn is pkd and record.layouts == {"map"} and record.needs.value == "same-shape"
    assert record.params == {"eps": 1e-6}
    assert any("batch" in n for n in NEEDS["pkd"])
