import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdgraph.data import (DataError, cutmix, cutmix_box, mixup, random_crop_flip, random_resized_crop_flip,
                          resized_crop_flip, resized_crop_params, sample_mix_ratio)
from kdgraph.data.augment import (crop_flip, crop_flip_offsets, cutmix_boxes, mix_images, mix_targets, paste_boxes,
                                  resized_crop_boxes)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batch(b=6, c=2, h=8, w=10):
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def test_mix_ratio_is_beta_max_and_deterministic():
    a = [sample_mix_ratio(1.0, _gen(s)) for s in range(200)]
    assert all(0.5 <= v <= 1.0 for v in a)
    assert a[:5] == [sample_mix_ratio(1.0, _gen(s)) for s in range(5)]
    # for alpha=1, a ~ U(0,1) so max(a, 1-a) ~ U(0.5, 1): mean 0.75
    assert abs(np.mean(a) - 0.75) < 0.03
    g = _gen(3)
    assert sample_mix_ratio(0.0, g) == 1.0
    assert torch.equal(g.get_state(), _gen(3).get_state())  # alpha <= 0 draws nothing


def test_mixup_formula():
    x = torch.randn(5, 3, 4, 4, generator=_gen(1))
    y = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 5).float()
    xm, ym = mixup(x, y, alpha=0.4, generator=_gen(7))
    a = sample_mix_ratio(0.4, _gen(7))
    assert 0.5 <= a <= 1
    for i in range(5):
        j = (i - 1) % 5  # roll(x, 1, 0)[i] == x[i-1]
        torch.testing.assert_close(xm[i], a * x[i] + (1 - a) * x[j])
        torch.testing.assert_close(ym[i], a * y[i] + (1 - a) * y[j])
    torch.testing.assert_close(ym.sum(1), torch.ones(5))


def test_mixup_fixed_ratio_and_no_labels():
    x = _batch()
    xm, ym = mixup(x, None, ratio=0.75)
    assert ym is None
    torch.testing.assert_close(xm, 0.75 * x + 0.25 * torch.roll(x, 1, 0))
    xm, ym = mixup(x, torch.tensor([0, 1, 0, 1, 0, 1]), ratio=1.0)  # int labels are cast
    torch.testing.assert_close(xm, x)
    assert ym.dtype == torch.float32


def test_cutmix_formula():
    b, c, h, w = 4, 3, 16, 12
    x = torch.randn(b, c, h, w, generator=_gen(2))
    y = F.one_hot(torch.arange(b), b).float()
    xm, ym = cutmix(x, y, alpha=1.0, generator=_gen(11))

    g = _gen(11)
    a = sample_mix_ratio(1.0, g)
    y0, y1, x0, x1 = cutmix_box(h, w, a, g)
    expected = x.clone()
    rolled = torch.roll(x, 1, 0)
    expected[:, :, y0:y1, x0:x1] = rolled[:, :, y0:y1, x0:x1]
    torch.testing.assert_close(xm, expected)
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    # label weight = actual pasted area, counted from the pixels themselves
    from_rolled = ((xm == rolled) & (xm != x)).all(1).float().mean().item()
    assert math.isclose(1 - lam, from_rolled, abs_tol=1e-6)
    torch.testing.assert_close(ym, lam * y + (1 - lam) * torch.roll(y, 1, 0))


def test_cutmix_box_area_and_clipping():
    # unclipped box (centre in the middle) has area round(h*sqrt(1-a)) * round(w*sqrt(1-a))
    for a in (0.5, 0.75, 0.9):
        for seed in range(20):
            y0, y1, x0, x1 = cutmix_box(32, 32, a, _gen(seed))
            side = round(32 * math.sqrt(1 - a))
            assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 32
            assert y1 - y0 <= side and x1 - x0 <= side
    x = _batch(3, 1, 8, 8)
    y = F.one_hot(torch.arange(3), 3).float()
    xm, ym = cutmix(x, y, ratio=1.0, generator=_gen(0))  # empty box: identity
    torch.testing.assert_close(xm, x)
    torch.testing.assert_close(ym, y)


def test_random_crop_flip_matches_per_sample_reference():
    x = _batch(8, 2, 6, 7)
    p = 2
    out = random_crop_flip(x, p, _gen(5))
    g = _gen(5)
    oy = torch.randint(0, 2 * p + 1, (8,), generator=g)
    ox = torch.randint(0, 2 * p + 1, (8,), generator=g)
    fl = torch.rand((8,), generator=g) < 0.5
    xp = F.pad(x, (p, p, p, p))
    for i in range(8):
        ref = xp[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 7]
        if fl[i]:
            ref = ref.flip(-1)
        torch.testing.assert_close(out[i], ref)
    assert out.shape == x.shape
    assert 0 < fl.sum() < 8  # both branches exercised


def test_random_crop_flip_options_and_determinism():
    x = torch.randn(4, 3, 8, 8, generator=_gen(0))
    torch.testing.assert_close(random_crop_flip(x, 0, _gen(1), flip=False), x)
    torch.testing.assert_close(random_crop_flip(x, 3, _gen(9)), random_crop_flip(x, 3, _gen(9)))
    flipped_only = random_crop_flip(x, 0, _gen(1))
    for i in range(4):
        assert torch.equal(flipped_only[i], x[i]) or torch.equal(flipped_only[i], x[i].flip(-1))
    with pytest.raises(DataError):
        random_crop_flip(x[0], 2)
    with pytest.raises(DataError):
        mixup(x[0], None, 1.0)


def _ramp(b=4, h=16, w=16, axis=3):
    grid = torch.arange(w if axis == 3 else h, dtype=torch.float32)
    shape = (1, 1, 1, w) if axis == 3 else (1, 1, h, 1)
    return grid.reshape(shape).expand(b, 2, h, w).contiguous()


def test_resized_crop_identity_at_full_scale():
    x = torch.randn(3, 2, 9, 7, generator=_gen(2))
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen(0), flip=False)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_resized_crop_stretches_a_quarter_area_crop_by_two():
    # on a horizontal ramp f(i, j) = j, a crop of half the width resampled to the full width is a ramp of slope 1/2
    # (bilinear interpolation of a linear function is exact), mirrored (slope -1/2) when the sample was flipped
    x = _ramp(b=16, axis=3)
    out = random_resized_crop_flip(x, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=_gen(5))
    slopes = (out[..., 1:] - out[..., :-1])[:, :, :, 1:-1]
    per_sample = slopes.flatten(1)
    signs = set()
    for s in per_sample:
        assert torch.allclose(s, s[0].expand_as(s), atol=1e-4), "one slope per sample"
        assert abs(abs(float(s[0])) - 0.5) < 1e-4
        signs.add(float(s[0]) > 0)
    assert signs == {True, False}  # both flipped and unflipped samples in 16 draws
    assert out.min() >= 0 and out.max() <= 15
    y = _ramp(b=8, axis=2)  # vertical: never flipped, slope 1/2 down the rows
    out = random_resized_crop_flip(y, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=_gen(5))
    torch.testing.assert_close((out[:, :, 2:-1] - out[:, :, 1:-2]), torch.full_like(out[:, :, 2:-1], 0.5))


def test_resized_crop_is_deterministic_and_rejects_bad_ranges():
    x = torch.randn(4, 1, 8, 8, generator=_gen(1))
    a = random_resized_crop_flip(x, generator=_gen(9))
    assert torch.equal(a, random_resized_crop_flip(x, generator=_gen(9)))
    assert not torch.equal(a, random_resized_crop_flip(x, generator=_gen(10)))
    with pytest.raises(DataError, match="bad scale"):
        random_resized_crop_flip(x, scale=(0.9, 0.2))


def test_resized_crop_shards_crop_like_the_whole_batch():
    x = torch.randn(6, 1, 8, 8, generator=_gen(4))
    whole = random_resized_crop_flip(x, generator=_gen(11))
    halves = [random_resized_crop_flip(x[r * 3:(r + 1) * 3], generator=_gen(11), draw=(r * 3, 6)) for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), whole)
    with pytest.raises(DataError, match="does not hold"):
        random_resized_crop_flip(x, generator=_gen(11), draw=(3, 6))


def _bilinear_by_hand(image, box, flip):
    """One (C, H, W) image: output pixel (i, j) reads (top·H + (i + 1/2)·height − 1/2, left·W + (j + 1/2)·width − 1/2),
    clamped to the image, bilinearly; j -> W − 1 − j when flipped. Float64 loops."""
    c, h, w = image.shape
    top, left, height, width = (float(v) for v in box)
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            jj = w - 1 - j if flip else j
            y = min(max(top * h + (i + 0.5) * height - 0.5, 0.0), h - 1.0)
            x = min(max(left * w + (jj + 0.5) * width - 0.5, 0.0), w - 1.0)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            wy, wx = y - y0, x - x0
            out[:, i, j] = ((1 - wy) * (1 - wx) * image[:, y0, x0].double() + (1 - wy) * wx * image[:, y0, x1].double()
                            + wy * (1 - wx) * image[:, y1, x0].double() + wy * wx * image[:, y1, x1].double())
    return out


def test_resized_crop_params_replay_the_random_crop_and_match_a_bilinear_loop():
    x = torch.randn(5, 2, 9, 11, generator=_gen(3), dtype=torch.float64)
    boxes, flips = resized_crop_params(5, (0.3, 0.9), generator=_gen(8))
    assert boxes.dtype == torch.float64 and boxes.shape == (5, 4) and flips.dtype == torch.bool
    top, left, height, width = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + height <= 1) & (left + width <= 1)).all())
    unclamped = (height < 1) & (width < 1)
    assert bool(((height * width)[unclamped] >= 0.3 - 1e-12).all() and ((height * width) <= 0.9 + 1e-12).all())
    # the whole augmentation is its numbers, then the crop
    torch.testing.assert_close(random_resized_crop_flip(x, (0.3, 0.9), generator=_gen(8)),
                               resized_crop_flip(x, boxes, flips), rtol=0, atol=0)
    for b in range(5):
        torch.testing.assert_close(resized_crop_flip(x, boxes, flips)[b], _bilinear_by_hand(x[b], boxes[b], flips[b]),
                                   rtol=0, atol=1e-12)
    # flip=False draws the same numbers and sets no flag; shards are rows of the whole draw
    same, none = resized_crop_params(5, (0.3, 0.9), generator=_gen(8), flip=False)
    assert torch.equal(same, boxes) and not bool(none.any())
    shard, _ = resized_crop_params(2, (0.3, 0.9), generator=_gen(8), draw=(3, 5))
    assert torch.equal(shard, boxes[3:])


def test_crop_flip_equals_torchvision_random_crop_and_flip_at_the_same_offsets():
    """kdgraph crops the normalised batch; torchvision pads the [0, 1] image with fill, crops, flips, then normalises.
    Given the same offsets and flips, and the padding colour carried into the normalised space, they agree."""
    import torchvision.transforms.functional as TF

    from kdgraph.data import crop_flip, crop_flip_params
    from kdgraph.data.views import normalised_fill

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    pixels = torch.rand(6, 3, 9, 11, generator=_gen(0))
    normalise = lambda img: TF.normalize(img, mean, std)  # noqa: E731
    for padding, fill in ((2, 0.0), (3, 0.5), (1, 1.0)):
        oy, ox, flips = crop_flip_params(6, padding, _gen(padding))
        assert 0 < int(flips.sum()) < 6
        ours = crop_flip(normalise(pixels), oy, ox, flips, padding, normalised_fill(fill, (mean, std)))
        for i in range(6):
            img = TF.crop(TF.pad(pixels[i], [padding], fill=fill), int(oy[i]), int(ox[i]), 9, 11)
            img = TF.hflip(img) if flips[i] else img
            torch.testing.assert_close(ours[i], normalise(img), rtol=0, atol=1e-6)
    # the border is black in pixel space: a grey (0 in normalised space) border would be wrong
    oy, ox = torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)
    corner = crop_flip(normalise(pixels), oy, ox, torch.zeros(6, dtype=torch.bool), 2,
                       normalised_fill(0.0, (mean, std)))[:, :, 0, 0]
    torch.testing.assert_close(corner, ((0 - torch.tensor(mean)) / torch.tensor(std)).expand(6, 3))


def test_random_crop_flip_draws_what_crop_flip_params_draws():
    from kdgraph.data import crop_flip, crop_flip_params

    x = torch.randn(5, 1, 6, 6, generator=_gen(1))
    oy, ox, flips = crop_flip_params(5, 2, _gen(4))
    torch.testing.assert_close(random_crop_flip(x, 2, _gen(4), fill=-0.5), crop_flip(x, oy, ox, flips, 2, -0.5))
    with pytest.raises(DataError, match="2 values for 1 channels"):
        crop_flip(x, oy, ox, flips, 2, (0.1, 0.2))


# -- per image ---------------------------------------------------------------------------------------------------------
def test_crop_flip_offsets_cover_the_range_and_crop_like_the_generator_path():
    u = torch.rand(2000, 3, generator=_gen(0), dtype=torch.float64)
    oy, ox, flips = crop_flip_offsets(u, 2)
    assert sorted(set(oy.tolist())) == [0, 1, 2, 3, 4] and sorted(set(ox.tolist())) == [0, 1, 2, 3, 4]
    assert 0.45 < flips.float().mean() < 0.55
    assert not crop_flip_offsets(u, 2, flip=False)[2].any()
    x = _batch(6, 2, 6, 7)
    out = crop_flip(x, oy[:6], ox[:6], flips[:6], 2)
    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        ref = xp[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 7]
        torch.testing.assert_close(out[i], ref.flip(-1) if flips[i] else ref)


def test_resized_crop_boxes_are_the_generator_paths_numbers():
    g = _gen(4)
    boxes, flips = resized_crop_params(7, (0.3, 0.8), generator=g)
    u = torch.rand((7, 5), generator=_gen(4), dtype=torch.float64)
    boxes2, flips2 = resized_crop_boxes(u, (0.3, 0.8))
    assert torch.equal(boxes, boxes2) and torch.equal(flips, flips2)


def test_cutmix_boxes_follow_cutmix_box_per_image():
    ratios = torch.tensor([0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    u = torch.rand(4, 2, generator=_gen(3), dtype=torch.float64)
    boxes, lam = cutmix_boxes(ratios, u, 16, 12)
    for b in range(4):
        cut = math.sqrt(1 - float(ratios[b]))
        ch, cw = int(round(16 * cut)), int(round(12 * cut))
        cy, cx = int(float(u[b, 0]) * 16), int(float(u[b, 1]) * 12)
        want = (max(cy - ch // 2, 0), min(cy + ch - ch // 2, 16), max(cx - cw // 2, 0), min(cx + cw - cw // 2, 12))
        assert tuple(boxes[b].tolist()) == want
        assert math.isclose(float(lam[b]), 1 - (want[1] - want[0]) * (want[3] - want[2]) / (16 * 12))
    assert float(lam[3]) == 1.0  # ratio 1: nothing pasted


def test_per_image_mixing_and_pasting():
    x, partner = torch.randn(3, 2, 5, 5, generator=_gen(1)), torch.randn(3, 2, 5, 5, generator=_gen(2))
    ratio = torch.tensor([1.0, 0.5, 0.75], dtype=torch.float64)
    mixed = mix_images(x, partner, ratio)
    for b in range(3):
        torch.testing.assert_close(mixed[b], float(ratio[b]) * x[b] + (1 - float(ratio[b])) * partner[b])
    boxes = torch.tensor([[0, 0, 0, 0], [1, 3, 2, 5], [0, 5, 0, 5]])
    pasted = paste_boxes(x, partner, boxes)
    torch.testing.assert_close(pasted[0], x[0])
    torch.testing.assert_close(pasted[2], partner[2])
    want = x[1].clone()
    want[:, 1:3, 2:5] = partner[1][:, 1:3, 2:5]
    torch.testing.assert_close(pasted[1], want)
    y = F.one_hot(torch.tensor([0, 1, 2]), 4)
    yp = F.one_hot(torch.tensor([3, 3, 2]), 4)
    t = mix_targets(y, yp, ratio)
    torch.testing.assert_close(t[1], torch.tensor([0.0, 0.5, 0.0, 0.5]))
    torch.testing.assert_close(t.sum(1), torch.ones(3))
