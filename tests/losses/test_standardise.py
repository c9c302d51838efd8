"""Logit standardisation vs python-loop float64 references of the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.logits import kl_div
from kdgraph.losses.standardise import NEEDS, kl_div_standardised, standardise


def ref_zscore(row: list[float], eps: float, unbiased: bool) -> list[float]:
    K = len(row)
    mean = sum(row) / K
    var = sum((v - mean) ** 2 for v in row) / (K - 1 if unbiased else K)
    return [(v - mean) / (math.sqrt(var) + eps) for v in row]


def ref_ls_kd(zs: torch.Tensor, zt: torch.Tensor, T: float, eps: float = 1e-7, unbiased: bool = True) -> float:
    """T^2 (1/B) sum_b KL(softmax(Z(z^t)/T) || softmax(Z(z^s)/T)), with loops."""
    total = 0.0
    for b in range(zs.shape[0]):
        es = [math.exp(v / T) for v in ref_zscore(zs[b].tolist(), eps, unbiased)]
        et = [math.exp(v / T) for v in ref_zscore(zt[b].tolist(), eps, unbiased)]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    return T * T * total / zs.shape[0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(24)


@pytest.mark.parametrize("unbiased", [True, False])
def test_standardise_against_reference(gen: torch.Generator, unbiased: bool) -> None:
    z = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 5 + 3
    got = standardise(z, 1e-7, unbiased=unbiased)
    for b in range(4):
        for k, want in enumerate(ref_zscore(z[b].tolist(), 1e-7, unbiased)):
            assert got[b, k].item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_standardise_matches_torch_std_by_default(gen: torch.Generator) -> None:
    z = torch.randn(3, 100, generator=gen, dtype=torch.float64)
    code = (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))  # the official code's normalize()
    torch.testing.assert_close(standardise(z), code, rtol=1e-12, atol=1e-12)


def test_standardise_hand_checked() -> None:
    # [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1]; population std sqrt(2/3)
    z = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(standardise(z, 1e-12), torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64))
    s = math.sqrt(1.5)
    torch.testing.assert_close(standardise(z, 1e-12, unbiased=False), torch.tensor([[-s, 0.0, s]], dtype=torch.float64))


def test_standardise_invariant_to_shift_and_scale(gen: torch.Generator) -> None:
    z = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(standardise(7.0 * z - 4.0), standardise(z), rtol=1e-6, atol=1e-6)


def test_constant_row_is_finite() -> None:
    z = torch.zeros(2, 5, requires_grad=True)
    out = standardise(z)
    assert torch.equal(out, torch.zeros(2, 5))
    (out * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_with_standardisation_equals_paper_formula(gen: torch.Generator, T: float) -> None:
    zs = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    zt = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 10 + 1
    want = ref_ls_kd(zs, zt, T)
    assert kl_div_standardised(zs, zt, temperature=T).item() == pytest.approx(want, rel=1e-10)
    # any logit term can apply the transform itself
    assert kl_div(standardise(zs), standardise(zt), temperature=T).item() == pytest.approx(want, rel=1e-10)
    pop = kl_div_standardised(zs, zt, temperature=T, unbiased=False).item()
    assert pop == pytest.approx(ref_ls_kd(zs, zt, T, unbiased=False), rel=1e-10)


def test_kd_ignores_logit_range(gen: torch.Generator) -> None:
    # the student matches a teacher whose logits are an affine map of its own: loss 0
    zs = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    assert kl_div_standardised(zs, 9.0 * zs + 2.0).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_div(zs, 9.0 * zs + 2.0).item() > 0.1


def test_gradcheck(gen: torch.Generator) -> None:
    zs = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: kl_div_standardised(a, zt), (zs,))


def test_bf16_autocast(gen: torch.Generator) -> None:
    zs = torch.randn(4, 10, generator=gen).bfloat16().requires_grad_(True)
    zt = torch.randn(4, 10, generator=gen).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = kl_div_standardised(zs, zt)
        z = standardise(zs)
    assert out.dtype == torch.float32 and z.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ls_kd(zs.detach().double(), zt.double(), 2.0), rel=1e-4)
    out.backward()
    assert zs.grad is not None and torch.isfinite(zs.grad.float()).all()


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        standardise(torch.zeros(3))
    with pytest.raises(ValueError, match="2 classes"):
        standardise(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="eps"):
        standardise(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="equal shape"):
        kl_div_standardised(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kl_div_standardised(torch.zeros(2, 3), torch.zeros(2, 3), temperature=-1.0)


def test_needs_declared() -> None:
    assert set(NEEDS) == {"standardise", "kl_div_standardised"}
