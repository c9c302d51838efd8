"""FGD: the masks (hand-checked, and against a cell-by-cell reference), the attention, the four terms against
element-by-element references (the global context modules written out with their weights), the initialisation, and
the term as the graph calls it with torchvision-style targets."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.align import FeatureShape
from kdgraph.losses import STEP_INPUTS, get_loss
from kdgraph.losses.fgd import NEEDS, FGDModule, GlobalContext, fgd, fgd_attention, fgd_masks, fgd_parts, fgd_term

T = torch.float64


def ref_masks(boxes: list[list[tuple[float, float, float, float]]], sizes: list[tuple[int, int]], H: int, W: int):
    """The masks cell by cell: a box covers rows floor(y1 H / h)..ceil(y2 H / h) and the same for columns,
    inclusive, with 1 / (rows * columns); overlaps keep the largest; the background sums to 1 per image."""
    fg = [[[0.0] * W for _ in range(H)] for _ in boxes]
    for b, (image_boxes, (img_h, img_w)) in enumerate(zip(boxes, sizes)):
        for x1, y1, x2, y2 in image_boxes:
            c0, c1 = math.floor(x1 / img_w * W), math.ceil(x2 / img_w * W)
            r0, r1 = math.floor(y1 / img_h * H), math.ceil(y2 / img_h * H)
            value = 1.0 / ((r1 + 1 - r0) * (c1 + 1 - c0))
            for r in range(max(r0, 0), min(r1, H - 1) + 1):
                for c in range(max(c0, 0), min(c1, W - 1) + 1):
                    fg[b][r][c] = max(fg[b][r][c], value)
    bg = []
    for plane in fg:
        free = [[1.0 if v == 0 else 0.0 for v in row] for row in plane]
        n = sum(map(sum, free))
        bg.append([[v / n if n else 0.0 for v in row] for row in free])
    return fg, bg


def softmax(values: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in values)
    return [math.exp(v) / z for v in values]


def ref_attention(x: torch.Tensor, temp: float):
    B, C, H, W = x.shape
    spatial, channel = [], []
    for b in range(B):
        per_pos = [sum(abs(x[b, c, h, w].item()) for c in range(C)) / C for h in range(H) for w in range(W)]
        spatial.append([H * W * p for p in softmax([v / temp for v in per_pos])])
        per_ch = [sum(abs(v) for v in x[b, c].flatten().tolist()) / (H * W) for c in range(C)]
        channel.append([C * p for p in softmax([v / temp for v in per_ch])])
    return spatial, channel  # spatial[b][h * W + w], channel[b][c]


def ref_context(module: GlobalContext, x: torch.Tensor) -> torch.Tensor:
    """G(x) = x + W2 relu(LN(W1 context + b1)) + b2, context = sum_p softmax_p(w_k . x_p + b_k) x_p, written out."""
    B, C, H, W = x.shape
    wk, bk = module.conv_mask.weight.reshape(C).tolist(), module.conv_mask.bias.item()
    conv1, ln, _, conv2 = module.channel_add
    mid = conv1.out_channels
    w1, b1 = conv1.weight.reshape(mid, C).tolist(), conv1.bias.tolist()
    gamma, beta = ln.weight.reshape(mid).tolist(), ln.bias.reshape(mid).tolist()
    w2, b2 = conv2.weight.reshape(C, mid).tolist(), conv2.bias.tolist()
    out = x.clone()
    for b in range(B):
        positions = [(h, w) for h in range(H) for w in range(W)]
        weights = softmax([sum(wk[c] * x[b, c, h, w].item() for c in range(C)) + bk for h, w in positions])
        context = [sum(p * x[b, c, h, w].item() for p, (h, w) in zip(weights, positions)) for c in range(C)]
        hidden = [sum(w1[m][c] * context[c] for c in range(C)) + b1[m] for m in range(mid)]
        mean = sum(hidden) / mid
        var = sum((v - mean) ** 2 for v in hidden) / mid
        hidden = [max(0.0, (v - mean) / math.sqrt(var + ln.eps) * gamma[m] + beta[m]) for m, v in enumerate(hidden)]
        for c in range(C):
            out[b, c] += sum(w2[c][m] * hidden[m] for m in range(mid)) + b2[c]
    return out


def ref_fgd_parts(s, t, boxes, sizes, module: FGDModule, temp: float):  # type: ignore[no-untyped-def]
    B, C, H, W = s.shape
    fg, bg = ref_masks(boxes, sizes, H, W)
    sp_s, ch_s = ref_attention(s, temp)
    sp_t, ch_t = ref_attention(t, temp)
    l_fg = l_bg = 0.0
    for b in range(B):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    d2 = (s[b, c, h, w].item() - t[b, c, h, w].item()) ** 2 * sp_t[b][h * W + w] * ch_t[b][c]
                    l_fg += d2 * fg[b][h][w]
                    l_bg += d2 * bg[b][h][w]
    l_at = sum(abs(a - y) for b in range(B) for a, y in zip(ch_s[b], ch_t[b]))
    l_at += sum(abs(a - y) for b in range(B) for a, y in zip(sp_s[b], sp_t[b]))
    gs, gt = ref_context(module.student, s), ref_context(module.teacher, t)
    l_gl = sum((a - y) ** 2 for a, y in zip(gs.flatten().tolist(), gt.flatten().tolist()))
    return l_fg / B, l_bg / B, l_at / B, l_gl / B


def perturbed(channels: int, seed: int) -> FGDModule:
    """A context module pair away from its initialisation (which makes G the identity)."""
    torch.manual_seed(seed)
    module = FGDModule(channels).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


BOXES = [[(10.0, 20.0, 60.0, 70.0), (40.5, 5.0, 99.0, 33.3)], [(0.0, 0.0, 128.0, 96.0)], []]
SIZES = [(100, 120), (96, 128), (80, 80)]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(2022)


def close(got: torch.Tensor, want: list) -> None:  # type: ignore[type-arg]
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=1e-15, atol=0.0)


def box_tensors(boxes=BOXES) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [torch.tensor(b, dtype=T).reshape(-1, 4) for b in boxes]


def test_masks_hand_checked() -> None:
    # an 8 x 8 image on a 4 x 4 map (scale 1/2). Box A (0, 0, 3, 3) -> x, y in [0, 1.5] -> cells 0..2: 1/9.
    # Box B (2, 2, 8, 8) -> [1, 4] -> cells 1..4, clipped to 1..3, but its value counts 4 x 4 cells: 1/16.
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 3.0, 3.0], [2.0, 2.0, 8.0, 8.0]], dtype=T),
                        torch.zeros(0, 4, dtype=T)], [(8, 8), (8, 8)], (4, 4), dtype=T)
    a, b = 1 / 9, 1 / 16
    close(fg[0], [[a, a, a, 0], [a, a, a, b], [a, a, a, b], [0, b, b, b]])
    assert bg[0].tolist() == [[0, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 0], [0.5, 0, 0, 0]]
    assert fg[1].abs().sum() == 0 and bg[1].tolist() == [[1 / 16] * 4] * 4  # no boxes: all background
    # a box covering the image leaves no background: all zero, not NaN
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 8.0, 8.0]], dtype=T)], [(8, 8)], (4, 4), dtype=T)
    assert torch.all(fg == 1 / 25) and torch.all(bg == 0)


@pytest.mark.parametrize("grid", [(5, 6), (13, 16), (1, 1), (25, 32)])
def test_masks_against_reference(grid: tuple[int, int]) -> None:
    fg, bg = fgd_masks(box_tensors(), SIZES, grid, dtype=T)
    want_fg, want_bg = ref_masks(BOXES, SIZES, *grid)
    close(fg, want_fg)
    close(bg, want_bg)
    assert fg.dtype == T and fg.shape == (3, *grid)


def test_masks_follow_the_image_size_the_boxes_are_given_in() -> None:
    # the same boxes in an image twice as large, coordinates doubled: the same masks on the map
    doubled = [b * 2 for b in box_tensors()]
    fg, bg = fgd_masks(box_tensors(), SIZES, (10, 12), dtype=T)
    fg2, bg2 = fgd_masks(doubled, [(2 * h, 2 * w) for h, w in SIZES], (10, 12), dtype=T)
    assert torch.equal(fg, fg2) and torch.equal(bg, bg2)
    # int boxes and a (B, 2) size tensor are read the same way
    fg3, _ = fgd_masks([torch.tensor([[0, 0, 3, 3]])], torch.tensor([[8, 8]]), (4, 4), dtype=T)
    assert fg3[0, 0, 0].item() == pytest.approx(1 / 9)


def test_attention(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=T)
    spatial, channel = fgd_attention(x, 0.5)
    want_s, want_c = ref_attention(x, 0.5)
    torch.testing.assert_close(spatial.reshape(2, -1), torch.tensor(want_s, dtype=T), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(channel, torch.tensor(want_c, dtype=T), rtol=1e-12, atol=0.0)
    assert spatial.sum((1, 2)).tolist() == pytest.approx([20.0, 20.0])  # H W times a distribution
    assert channel.sum(1).tolist() == pytest.approx([3.0, 3.0])  # C times a distribution


def test_parts_against_reference(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 6, 7, generator=gen, dtype=T)
    t = 2 * torch.randn(3, 4, 6, 7, generator=gen, dtype=T)
    module = perturbed(4, 0)
    got = fgd_parts(s, t, boxes=box_tensors(), image_sizes=SIZES, module=module, temperature=0.5)
    want = ref_fgd_parts(s, t, BOXES, SIZES, module, 0.5)
    for name, a, b in zip(("fg", "bg", "attention", "global"), got, want):
        assert a.dtype == T and a.item() == pytest.approx(b, rel=1e-12), name
    weights = dict(alpha=0.1, beta=0.2, gamma=0.3, lambda_=0.4)
    total = fgd(s, t, boxes=box_tensors(), image_sizes=SIZES, module=module, temperature=0.5, **weights)
    assert total.item() == pytest.approx(sum(w * v for w, v in zip(weights.values(), want)), rel=1e-12)
    default = fgd(s, t, boxes=box_tensors(), image_sizes=SIZES, module=module)  # RetinaNet's config
    assert default.item() == pytest.approx(1e-3 * want[0] + 5e-4 * want[1] + 5e-4 * want[2] + 5e-6 * want[3],
                                           rel=1e-12)


def test_initialisation_makes_the_global_context_the_identity(gen: torch.Generator) -> None:
    module = FGDModule(256)
    for side in (module.student, module.teacher):
        assert torch.all(side.channel_add[-1].weight == 0) and torch.all(side.channel_add[-1].bias == 0)
        assert torch.all(side.conv_mask.bias == 0)
        std = side.conv_mask.weight.std().item()  # Kaiming normal, fan in 256, ReLU gain: sqrt(2 / 256)
        assert abs(std - math.sqrt(2 / 256)) < 0.15 * math.sqrt(2 / 256)
        assert side.channel_add[1].normalized_shape == (128, 1, 1)
    s = torch.randn(2, 256, 3, 4, generator=gen)
    assert torch.equal(module.student(s), s)
    # so at initialisation the global term is the plain summed squared difference over the batch
    t = torch.randn(2, 256, 3, 4, generator=gen)
    parts = fgd_parts(s, t, boxes=[torch.zeros(0, 4)] * 2, image_sizes=[(32, 32)] * 2, module=module)
    assert parts[3].item() == pytest.approx(((s - t) ** 2).sum().item() / 2, rel=1e-6)


def test_zero_for_equal_maps_and_equal_context_modules(gen: torch.Generator) -> None:
    t = torch.randn(3, 4, 5, 5, generator=gen, dtype=T)
    module = perturbed(4, 1)
    module.teacher.load_state_dict(module.student.state_dict())
    assert fgd(t, t, boxes=box_tensors(), image_sizes=SIZES, module=module).item() == 0.0


def test_gradients_reach_the_student_and_both_context_modules(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 5, 5, generator=gen, dtype=T, requires_grad=True)
    t = torch.randn(3, 4, 5, 5, generator=gen, dtype=T)
    module = perturbed(4, 2)
    fgd(s, t, boxes=box_tensors(), image_sizes=SIZES, module=module).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the whole loss against finite differences, on a small pair
    small = perturbed(2, 3)
    s2 = torch.randn(2, 2, 3, 3, generator=gen, dtype=T, requires_grad=True)
    t2 = torch.randn(2, 2, 3, 3, generator=gen, dtype=T)
    weights = dict(alpha=1.0, beta=1.0, gamma=1.0, lambda_=1.0)
    assert torch.autograd.gradcheck(
        lambda x: fgd(x, t2, boxes=box_tensors()[:2], image_sizes=SIZES[:2], module=small, **weights), (s2,))


def test_term_reads_torchvision_style_targets(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, 5, 6, generator=gen, dtype=T)
    t = torch.randn(3, 4, 5, 6, generator=gen, dtype=T)
    record = get_loss("fgd")
    module = record.module(FeatureShape((4, 5, 6), "map"), FeatureShape((4, 5, 6), "map")).double()
    targets = [{"boxes": b, "labels": torch.zeros(len(b), dtype=torch.long)} for b in box_tensors()]
    got = fgd_term(s, t, module=module, targets=targets, image_sizes=SIZES, temperature=0.8)
    assert got.item() == pytest.approx(
        fgd(s, t, boxes=box_tensors(), image_sizes=SIZES, module=module, temperature=0.8).item(), rel=1e-15)
    with pytest.raises(ValueError, match="fgd needs the batch's ground-truth boxes and image sizes"):
        fgd_term(s, t, module=module)
    with pytest.raises(ValueError, match="must be a dict with 'boxes'"):
        fgd_term(s, t, module=module, targets=box_tensors(), image_sizes=SIZES)


def test_validation() -> None:
    z = torch.zeros(2, 4, 3, 3)
    module = FGDModule(4)
    one = [torch.zeros(0, 4)] * 2
    with pytest.raises(ValueError, match="widths differ"):
        fgd(z, torch.zeros(2, 5, 3, 3), boxes=one, image_sizes=[(9, 9)] * 2, module=module)
    with pytest.raises(ValueError, match="boxes for 1 images"):
        fgd(z, z, boxes=one[:1], image_sizes=[(9, 9)], module=module)
    with pytest.raises(ValueError, match="2 images of boxes but 1 image sizes"):
        fgd(z, z, boxes=one, image_sizes=[(9, 9)], module=module)
    with pytest.raises(ValueError, match=r"must be \(N, 4\)"):
        fgd(z, z, boxes=[torch.zeros(3)] * 2, image_sizes=[(9, 9)] * 2, module=module)
    with pytest.raises(ValueError, match="height, width"):
        fgd(z, z, boxes=one, image_sizes=[(0, 9)] * 2, module=module)
    with pytest.raises(ValueError, match="at least 2 channels"):
        GlobalContext(1)
    with pytest.raises(ValueError, match="projector: linear"):
        get_loss("fgd").module(FeatureShape((3, 4, 4), "map"), FeatureShape((4, 4, 4), "map"))


def test_record() -> None:
    record = get_loss("fgd")
    assert record.fn is fgd_term and record.layouts == {"map"} and record.needs.value == "same-shape"
    assert dict(record.inputs) == {"targets": "targets", "image_sizes": "image_sizes"}
    assert {"targets", "image_sizes"} <= set(STEP_INPUTS)
    assert record.params == {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_": 5e-6}
    assert any("image_sizes" in n for n in NEEDS["fgd"]) and any("targets" in n for n in NEEDS["fgd"])
