"""MGD: the mask's law and determinism, the loss vs an explicit sum, gradients reach the generator."""

from __future__ import annotations

import pytest
import torch

from kdgraph.losses.mgd import NEEDS, MGDGenerator, mgd, mgd_mask


def ref_mgd(g: torch.Tensor, t: torch.Tensor, alpha: float) -> float:
    total = sum((a - b) ** 2 for a, b in zip(g.flatten().tolist(), t.flatten().tolist()))
    return alpha * total / g.shape[0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(23)


def test_loss_against_reference(gen: torch.Generator) -> None:
    g = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    for alpha in (2e-5, 1.0):
        got = mgd(g, t, alpha=alpha)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(ref_mgd(g, t, alpha), rel=1e-12)
    assert mgd(g.float(), t.float(), alpha=1.0).item() == pytest.approx(ref_mgd(g, t, 1.0), rel=1e-5)


def test_hand_checked() -> None:
    # a sum over the map divided by the batch: 2 samples, each with one entry off by 2 -> alpha * (4 + 4) / 2
    g = torch.zeros(2, 1, 2, 2)
    t = torch.zeros(2, 1, 2, 2)
    t[0, 0, 0, 0] = 2.0
    t[1, 0, 1, 1] = -2.0
    assert mgd(g, t, alpha=0.5).item() == pytest.approx(0.5 * 8 / 2)


def test_spatial_mask(gen: torch.Generator) -> None:
    x = torch.randn(4, 8, 16, 16, generator=gen)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    m1, m2 = mgd_mask(x, 0.65, generator=g1), mgd_mask(x, 0.65, generator=g2)
    assert m1.shape == (4, 1, 16, 16) and torch.equal(m1, m2)  # same generator state -> same mask
    assert set(m1.unique().tolist()) <= {0.0, 1.0}
    # the law: each position masked with probability 0.65 (1024 draws: within 5 standard deviations)
    masked = (m1 == 0).float().mean().item()
    assert abs(masked - 0.65) < 5 * (0.65 * 0.35 / 1024) ** 0.5
    # the next mask from the same generator differs, and equals a replay from a saved state
    state = g1.get_state()
    m3 = mgd_mask(x, 0.65, generator=g1)
    assert not torch.equal(m1, m3)
    g1.set_state(state)
    assert torch.equal(mgd_mask(x, 0.65, generator=g1), m3)


def test_channel_mask(gen: torch.Generator) -> None:
    x = torch.randn(3, 6, 4, 4, generator=gen, dtype=torch.float64)
    m = mgd_mask(x, 0.15, generator=torch.Generator().manual_seed(0), mode="channel")
    assert m.shape == (3, 6, 1, 1) and m.dtype == torch.float64
    assert torch.equal(mgd_mask(x, 0.0, mode="channel"), torch.ones(3, 6, 1, 1, dtype=torch.float64))


def test_generator_module_and_gradients(gen: torch.Generator) -> None:
    block = MGDGenerator(4)
    s = torch.randn(2, 4, 6, 6, generator=gen, requires_grad=True)
    t = torch.randn(2, 4, 6, 6, generator=gen)
    mask = mgd_mask(s, 0.5, generator=torch.Generator().manual_seed(1))
    out = block(s, mask)
    # the generator sees exactly the masked map: conv3x3 -> ReLU -> conv3x3 written with the block's own layers
    c1, c2 = block.generation[0], block.generation[2]
    want = torch.nn.functional.conv2d(
        torch.relu(torch.nn.functional.conv2d(s * mask, c1.weight, c1.bias, padding=1)), c2.weight, c2.bias, padding=1
    )
    torch.testing.assert_close(out, want)
    mgd(out, t, alpha=1.0).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # masked positions get no gradient through the mask
    assert torch.all(s.grad * (1 - mask) == 0)


def test_bf16_autocast(gen: torch.Generator) -> None:
    g = torch.randn(2, 3, 4, 4, generator=gen).bfloat16().requires_grad_(True)
    t = torch.randn(2, 3, 4, 4, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = mgd(g, t, alpha=1.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_mgd(g.detach().double(), t.double(), 1.0), rel=1e-5)


def test_validation() -> None:
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="widths differ"):
        mgd(z, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        mgd(z, z, alpha=0.0)
    with pytest.raises(ValueError, match="ratio"):
        mgd_mask(z, 1.0)
    with pytest.raises(ValueError, match="mode"):
        mgd_mask(z, 0.5, mode="pixel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        mgd_mask(torch.zeros(2, 3), 0.5)


def test_needs_declared() -> None:
    assert any("torch.Generator" in n for n in NEEDS["mgd"])


def test_every_fpn_level_is_one_pair_with_its_own_generator(gen: torch.Generator) -> None:
    # detection (the official det code, mmrazor's RetinaNet recipe): one MGD loss per FPN level, each with its own
    # generator; the loss takes maps of any grid, the mask drawn on that grid. One pair per level, summed.
    from kdgraph.align import FeatureShape
    from kdgraph.losses import get_loss
    from kdgraph.losses.feature import mse

    record = get_loss("mgd")
    grids = [(20, 30), (10, 15), (5, 8), (3, 4), (2, 2)]  # P3-P7 of a 160 x 240 input
    total = want = 0.0
    for level, (h, w) in enumerate(grids):
        s = torch.randn(2, 8, h, w, generator=gen)
        t = torch.randn(2, 8, h, w, generator=gen)
        module = record.module(FeatureShape((8, h, w), "map"), FeatureShape((8, h, w), "map"), seed=level)
        mask = mgd_mask(s, 0.65, generator=torch.Generator().manual_seed(level))  # the stream's first draw
        assert mask.shape == (2, 1, h, w)
        generated = module.generator(s, mask)
        total += record.fn(s, t, module=module).item()
        want += ref_mgd(generated.detach().double(), t.double(), 2e-5)
        # FitNet-style L2 on a level is mse: the mean over every entry of the level, whatever its grid
        assert mse(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    assert total == pytest.approx(want, rel=1e-5)
