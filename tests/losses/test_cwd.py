"""CWD: the channel-wise KL against an element-by-element reference, a hand-checked value, and the invariances that
make it CWD (a per-channel softmax over positions: shift-invariant per channel, position order irrelevant)."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses import get_loss
from kdgraph.losses.cwd import NEEDS, cwd


def ref_cwd(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """tau^2 / (B C) sum_{b,c} sum_{hw} p_t log(p_t / p_s), each channel's softmax written out."""
    B, C = s.shape[:2]
    total = 0.0
    for b in range(B):
        for c in range(C):
            xs = [v / tau for v in s[b, c].flatten().tolist()]
            xt = [v / tau for v in t[b, c].flatten().tolist()]
            zs = sum(math.exp(v) for v in xs)
            zt = sum(math.exp(v) for v in xt)
            for a, y in zip(xs, xt):
                ps, pt = math.exp(a) / zs, math.exp(y) / zt
                total += pt * math.log(pt / ps)
    return tau * tau * total / (B * C)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(31)


@pytest.mark.parametrize("tau", [1.0, 4.0, 0.5])
def test_against_reference(gen: torch.Generator, tau: float) -> None:
    s = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    t = 2 * torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    got = cwd(s, t, temperature=tau)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_cwd(s, t, tau), rel=1e-12)
    assert cwd(s.float(), t.float(), temperature=tau).item() == pytest.approx(ref_cwd(s, t, tau), rel=1e-5)


def test_hand_checked() -> None:
    # one channel, two positions: teacher uniform, student (1/4, 3/4): KL = 0.5 log 2 + 0.5 log(2/3) = 0.5 log(4/3)
    t = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    s = torch.tensor([[[[0.0, math.log(3.0)]]]], dtype=torch.float64)
    assert cwd(s, t).item() == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-12)
    # averaged over channels and samples: the same channel beside a matching one, in each of two samples -> half
    s2 = torch.cat([s, t], dim=1).repeat(2, 1, 1, 1)
    t2 = torch.cat([t, t], dim=1).repeat(2, 1, 1, 1)
    assert cwd(s2, t2).item() == pytest.approx(0.25 * math.log(4.0 / 3.0), rel=1e-12)


def test_dense_logits(gen: torch.Generator) -> None:
    # segmentation logits (B, K, H, W): every class map is a "channel" (mmrazor's PSPNet logits recipe)
    s = torch.randn(2, 19, 4, 8, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 19, 4, 8, generator=gen, dtype=torch.float64)
    assert cwd(s, t).item() == pytest.approx(ref_cwd(s, t, 1.0), rel=1e-12)


def test_invariances(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    base = cwd(s, t, temperature=2.0).item()
    assert cwd(t, t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-14)
    # a constant per (sample, channel) on either side changes no softmax over positions
    shift = torch.randn(2, 3, 1, 1, generator=gen, dtype=torch.float64) * 10
    assert cwd(s + shift, t, temperature=2.0).item() == pytest.approx(base, rel=1e-11)
    assert cwd(s, t - shift, temperature=2.0).item() == pytest.approx(base, rel=1e-11)
    # the same permutation of positions on both sides: the positions are a set
    perm = torch.randperm(20, generator=gen)
    s_p = s.reshape(2, 3, 20)[..., perm].reshape(2, 3, 4, 5)
    t_p = t.reshape(2, 3, 20)[..., perm].reshape(2, 3, 4, 5)
    assert cwd(s_p, t_p, temperature=2.0).item() == pytest.approx(base, rel=1e-12)
    # but it is no per-channel scale invariance: a sharper student distribution costs
    assert cwd(3 * s, t, temperature=2.0).item() != pytest.approx(base, rel=1e-3)
    # and the divergence is KL(teacher || student), not the reverse
    assert cwd(s, t).item() == pytest.approx(ref_cwd(s, t, 1.0), rel=1e-12)
    assert cwd(s, t).item() != pytest.approx(ref_cwd(t, s, 1.0), rel=1e-3)


def test_gradients_and_bf16(gen: torch.Generator) -> None:
    s = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: cwd(x, t, temperature=2.0), (s,))
    sb = s.detach().bfloat16().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = cwd(sb, t.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_cwd(sb.detach().double(), t.bfloat16().double(), 1.0), rel=1e-5)
    out.backward()
    assert sb.grad is not None and sb.grad.dtype == torch.bfloat16


def test_validation() -> None:
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="widths differ"):
        cwd(z, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="grids differ"):
        cwd(z, torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="temperature"):
        cwd(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="pooled vectors"):
        cwd(torch.zeros(2, 3), torch.zeros(2, 3))


def test_record() -> None:
    record = get_loss("cwd")
    assert record.fn is cwd and record.layouts == {"map"} and record.needs.value == "same-shape"
    assert record.params == {"temperature": 1.0} and not record.inputs
    assert any("FPN" in n for n in NEEDS["cwd"])
