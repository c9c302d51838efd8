"""Pixel-wise KD: the per-pixel KL against an element-by-element reference, Hinton's KD over the pixels as rows, and
the ignored pixels (labels on the logits' grid or resized to it by nearest neighbour)."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses import get_loss
from kdgraph.losses.logits import kl_div
from kdgraph.losses.pixel_kd import NEEDS, pixel_kd


def pixel_kl(s: torch.Tensor, t: torch.Tensor, b: int, h: int, w: int, T: float) -> float:
    xs = [v / T for v in s[b, :, h, w].tolist()]
    xt = [v / T for v in t[b, :, h, w].tolist()]
    zs, zt = sum(math.exp(v) for v in xs), sum(math.exp(v) for v in xt)
    return sum(math.exp(y) / zt * math.log((math.exp(y) / zt) / (math.exp(a) / zs)) for a, y in zip(xs, xt))


def ref_pixel_kd(s: torch.Tensor, t: torch.Tensor, T: float, keep=None) -> float:  # type: ignore[no-untyped-def]
    B, _, H, W = s.shape
    total, count = 0.0, 0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if keep is not None and not keep(b, h, w):
                    continue
                total += pixel_kl(s, t, b, h, w, T)
                count += 1
    return T * T * total / count if count else 0.0


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_against_reference(gen: torch.Generator, T: float) -> None:
    s = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    t = 3 * torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    got = pixel_kd(s, t, temperature=T)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_pixel_kd(s, t, T), rel=1e-12)
    assert pixel_kd(s.float(), t.float(), temperature=T).item() == pytest.approx(ref_pixel_kd(s, t, T), rel=1e-5)


def test_is_kd_with_every_pixel_a_sample(gen: torch.Generator) -> None:
    # CIRKD flattens the logits to (B H W, K) rows and takes KD's batch mean: the same as kdgraph's logit KL
    s = torch.randn(2, 6, 3, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 6, 3, 5, generator=gen, dtype=torch.float64)
    rows = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 6)  # noqa: E731
    assert pixel_kd(s, t, temperature=4.0).item() == pytest.approx(kl_div(rows(s), rows(t), 4.0).item(), rel=1e-12)


def test_ignored_pixels(gen: torch.Generator) -> None:
    s = torch.randn(2, 4, 3, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 4, 3, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 4), generator=gen)
    labels[0, 0, :] = 255
    labels[1, 2, 1] = 255
    got = pixel_kd(s, t, temperature=2.0, ignore_index=255, target=labels)
    want = ref_pixel_kd(s, t, 2.0, keep=lambda b, h, w: labels[b, h, w].item() != 255)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # without ignore_index the labels are not read: every pixel counts
    assert pixel_kd(s, t, temperature=2.0, target=labels).item() == pytest.approx(ref_pixel_kd(s, t, 2.0), rel=1e-12)
    # every pixel ignored: 0, not NaN
    assert pixel_kd(s, t, ignore_index=255, target=torch.full((2, 3, 4), 255)).item() == 0.0


def test_labels_on_a_finer_grid_are_resized_by_nearest_neighbour(gen: torch.Generator) -> None:
    # logits at 3 x 4, labels at 7 x 9 (the input's size): label cell of logit (h, w) = (floor(h*7/3), floor(w*9/4))
    s = torch.randn(1, 3, 3, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(1, 3, 3, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 7, 9), generator=gen)
    labels[0, ::2, ::3] = 255
    picked = lambda b, h, w: labels[b, (h * 7) // 3, (w * 9) // 4].item() != 255  # noqa: E731
    assert sum(not picked(0, h, w) for h in range(3) for w in range(4)) > 0  # the case ignores some pixels
    got = pixel_kd(s, t, ignore_index=255, target=labels)
    assert got.item() == pytest.approx(ref_pixel_kd(s, t, 1.0, keep=picked), rel=1e-12)


def test_invariances_and_gradients(gen: torch.Generator) -> None:
    s = torch.randn(2, 4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 2, 3, generator=gen, dtype=torch.float64)
    assert pixel_kd(t, t).item() == pytest.approx(0.0, abs=1e-14)
    shift = torch.randn(2, 1, 2, 3, generator=gen, dtype=torch.float64) * 10  # a constant per pixel over classes
    assert pixel_kd(s + shift, t).item() == pytest.approx(pixel_kd(s, t).item(), rel=1e-11)
    assert torch.autograd.gradcheck(lambda x: pixel_kd(x, t, temperature=2.0), (s,))


def test_validation() -> None:
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="widths differ"):
        pixel_kd(z, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="ignore_index needs the batch's label maps"):
        pixel_kd(z, z, ignore_index=255)
    with pytest.raises(ValueError, match="int class indices"):
        pixel_kd(z, z, ignore_index=255, target=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(2, H, W\)"):
        pixel_kd(z, z, ignore_index=255, target=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        pixel_kd(z, z, temperature=-1.0)


def test_record() -> None:
    record = get_loss("pixel_kd")
    assert record.fn is pixel_kd and record.layouts == {"map"}
    assert dict(record.inputs) == {"labels": "target"}
    assert record.params == {"temperature": 1.0, "ignore_index": None}
    assert any("labels" in n for n in NEEDS["pixel_kd"])
