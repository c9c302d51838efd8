"""CRD: the NCE loss vs loops, the bank's momentum update, the scores and Z, deterministic sampling, and a
bit-identical next step after a state-dict round trip."""

from __future__ import annotations

import math

import pytest
import torch

from kdgraph.losses.crd import NEEDS, CRDEmbed, CRDMemory, crd, nce_loss


def ref_nce(P: torch.Tensor, N: int, eps: float = 1e-7) -> float:
    B, K1 = P.shape
    noise = (K1 - 1) / N
    total = 0.0
    for b in range(B):
        p0 = float(P[b, 0])
        total += math.log(p0 / (p0 + noise + eps))
        for k in range(1, K1):
            total += math.log(noise / (float(P[b, k]) + noise + eps))
    return -total / B


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(31)


def test_nce_against_reference(gen: torch.Generator) -> None:
    P = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 1e-3
    got = nce_loss(P, num_data=100)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(ref_nce(P, 100), rel=1e-12)
    Q = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 1e-3
    assert crd(P, Q, num_data=100).item() == pytest.approx(ref_nce(P, 100) + ref_nce(Q, 100), rel=1e-12)
    assert nce_loss(P.float(), num_data=100).item() == pytest.approx(ref_nce(P, 100), rel=1e-5)


def test_nce_hand_checked() -> None:
    # K = 1 negative, N = 1: noise K/N = 1; P = [1, 1]: -(log 1/2 + log 1/2) = 2 ln 2 (eps aside)
    P = torch.ones(1, 2, dtype=torch.float64)
    assert nce_loss(P, num_data=1, eps=0.0).item() == pytest.approx(2 * math.log(2), rel=1e-12)


def test_embed_is_linear_then_unit_norm(gen: torch.Generator) -> None:
    head = CRDEmbed(6, 4).double()
    x = torch.randn(3, 2, 3, generator=gen, dtype=torch.float64)
    out = head(x)
    w, bias = head.linear.weight.detach(), head.linear.bias.detach()
    for b in range(3):
        flat = x[b].flatten().tolist()
        lin = [sum(float(w[o, i]) * flat[i] for i in range(6)) + float(bias[o]) for o in range(4)]
        for o, want in enumerate(unit(lin)):
            assert out[b, o].item() == pytest.approx(want, rel=1e-12)


def test_bank_init_and_state_dict_keys() -> None:
    mem = CRDMemory(10, 12, num_negatives=4, generator=torch.Generator().manual_seed(0))
    bound = 1.0 / math.sqrt(12 / 3)
    assert mem.memory_student.shape == (10, 12) and mem.memory_student.abs().max() <= bound
    assert set(mem.state_dict()) == {"memory_student", "memory_teacher", "z_student", "z_teacher"}
    assert mem.z_student.item() == -1.0 and mem.z_teacher.item() == -1.0
    labelled = CRDMemory(10, 12, labels=torch.arange(10) % 3)
    assert set(labelled.state_dict()) == set(mem.state_dict())  # the label tables are derived, not state


def test_update_is_the_momentum_formula(gen: torch.Generator) -> None:
    mem = CRDMemory(6, 3, num_negatives=2, momentum=0.5, generator=torch.Generator().manual_seed(1)).double()
    before_s, before_t = mem.memory_student.clone(), mem.memory_teacher.clone()
    idx = torch.tensor([4, 1])
    vs = torch.nn.functional.normalize(torch.randn(2, 3, generator=gen, dtype=torch.float64), dim=1)
    vt = torch.nn.functional.normalize(torch.randn(2, 3, generator=gen, dtype=torch.float64), dim=1)
    mem.update(idx, vs, vt)
    for bank, before, v in ((mem.memory_student, before_s, vs), (mem.memory_teacher, before_t, vt)):
        for row in range(6):
            if row in (4, 1):
                b = [4, 1].index(row)
                want = unit([0.5 * float(before[row, k]) + 0.5 * float(v[b, k]) for k in range(3)])
                assert bank[row].tolist() == pytest.approx(want, rel=1e-12)
            else:
                assert torch.equal(bank[row], before[row])  # untouched


@pytest.mark.parametrize("N", [8, 40])  # N <= 8 (K + 1): one product with the whole bank; above: the gathered rows
def test_scores_and_z(gen: torch.Generator, N: int) -> None:
    d, K, T = 4, 3, 0.07
    mem = CRDMemory(N, d, num_negatives=K, temperature=T, generator=torch.Generator().manual_seed(2)).double()
    vs = torch.nn.functional.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=1)
    vt = torch.nn.functional.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=1)
    idx = torch.tensor([0, 5])
    contrast = torch.tensor([[0, 3, 3, 7], [5, 1, 0, 2]])
    bank_s, bank_t = mem.memory_student.clone(), mem.memory_teacher.clone()
    ps, pt = mem(vs, vt, idx, contrast_index=contrast)

    def raw(anchor: torch.Tensor, bank: torch.Tensor) -> list[list[float]]:
        out = []
        for b in range(2):
            row = []
            for k in range(K + 1):
                dot = sum(float(bank[int(contrast[b, k]), j]) * float(anchor[b, j]) for j in range(d))
                row.append(math.exp(dot / T))
            out.append(row)
        return out

    rs, rt = raw(vs, bank_t), raw(vt, bank_s)  # student anchor against the teacher bank, and the reverse
    zs = N * sum(map(sum, rs)) / (2 * (K + 1))
    zt = N * sum(map(sum, rt)) / (2 * (K + 1))
    assert mem.z_student.item() == pytest.approx(zs, rel=1e-12)
    assert mem.z_teacher.item() == pytest.approx(zt, rel=1e-12)
    for b in range(2):
        for k in range(K + 1):
            assert ps[b, k].item() == pytest.approx(rs[b][k] / zs, rel=1e-12)
            assert pt[b, k].item() == pytest.approx(rt[b][k] / zt, rel=1e-12)
    # Z is estimated once: a second batch divides by the same constants
    mem(vs, vt, idx, contrast_index=contrast)
    assert mem.z_student.item() == pytest.approx(zs, rel=1e-12)


def test_sampling_is_deterministic_given_the_generator() -> None:
    mem = CRDMemory(50, 4, num_negatives=7)
    idx = torch.tensor([3, 17, 42])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a, b = mem.sample(idx, g1), mem.sample(idx, g2)
    assert a.shape == (3, 8) and torch.equal(a, b)
    assert torch.equal(a[:, 0], idx) and a.min() >= 0 and a.max() < 50
    state = g1.get_state()
    nxt = mem.sample(idx, g1)
    assert not torch.equal(nxt, a)
    g1.set_state(state)
    assert torch.equal(mem.sample(idx, g1), nxt)


def test_uniform_sampling_law() -> None:
    mem = CRDMemory(10, 2, num_negatives=2000)
    neg = mem.sample(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(3))[:, 1:]
    counts = torch.bincount(neg.flatten(), minlength=10).double()
    expected = neg.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40  # 9 degrees of freedom: P(chi2 > 40) ~ 1e-5


def test_class_exclusive_sampling() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])  # class 2 has 4 examples
    mem = CRDMemory(10, 2, num_negatives=3000, labels=labels)
    idx = torch.tensor([2, 0, 4])
    neg = mem.sample(idx, torch.Generator().manual_seed(4))[:, 1:]
    for row, anchor in enumerate(idx.tolist()):
        assert (labels[neg[row]] != labels[anchor]).all()
        allowed = [i for i in range(10) if labels[i] != labels[anchor]]
        counts = torch.bincount(neg[row], minlength=10).double()[allowed]
        expected = 3000 / len(allowed)
        assert float(((counts - expected) ** 2 / expected).sum()) < 35  # every other-class example, uniformly
    with pytest.raises(ValueError, match="same label"):
        CRDMemory(4, 2, labels=torch.zeros(4, dtype=torch.long))


def _step(
    embed_s: CRDEmbed,
    embed_t: CRDEmbed,
    mem: CRDMemory,
    fs: torch.Tensor,
    ft: torch.Tensor,
    idx: torch.Tensor,
    g: torch.Generator,
) -> torch.Tensor:
    ps, pt = mem(embed_s(fs), embed_t(ft), idx, generator=g)
    return crd(ps, pt, num_data=mem.num_data)


def test_state_dict_round_trip_is_bit_identical(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    embed_s, embed_t = CRDEmbed(5, 8), CRDEmbed(7, 8)
    mem = CRDMemory(40, 8, num_negatives=16, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    batches = [
        (torch.randn(4, 5, generator=gen), torch.randn(4, 7, generator=gen), torch.randint(40, (4,), generator=gen))
        for _ in range(3)
    ]
    _step(embed_s, embed_t, mem, *batches[0], g)
    # checkpoint: the heads, the bank (buffers: banks and Z) and the generator's state
    saved = {}
    for prefix, module in (("s.", embed_s), ("t.", embed_t), ("m.", mem)):
        saved.update({prefix + k: v.clone() for k, v in module.state_dict().items()})
    g_state = g.get_state()
    # a fresh process: other initial weights, banks and generator, then the state loaded
    torch.manual_seed(123)
    embed_s2, embed_t2 = CRDEmbed(5, 8), CRDEmbed(7, 8)
    mem2 = CRDMemory(40, 8, num_negatives=16, generator=torch.Generator().manual_seed(77))
    embed_s2.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("s.")})
    embed_t2.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("t.")})
    mem2.load_state_dict({k[2:]: v for k, v in saved.items() if k.startswith("m.")})
    g2 = torch.Generator()
    g2.set_state(g_state)
    for fs, ft, idx in batches[1:]:
        a = _step(embed_s, embed_t, mem, fs, ft, idx, g)
        b = _step(embed_s2, embed_t2, mem2, fs, ft, idx, g2)
        assert torch.equal(a, b)
        assert torch.equal(mem.memory_student, mem2.memory_student)


def test_gradients_reach_both_heads(gen: torch.Generator) -> None:
    embed_s, embed_t = CRDEmbed(5, 8), CRDEmbed(7, 8)
    mem = CRDMemory(30, 8, num_negatives=10, generator=torch.Generator().manual_seed(0))
    fs, ft = torch.randn(4, 5, generator=gen), torch.randn(4, 7, generator=gen)
    loss = _step(embed_s, embed_t, mem, fs, ft, torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(1))
    loss.backward()
    for head in (embed_s, embed_t):
        for name, p in head.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not mem.memory_student.requires_grad


def test_bf16_autocast(gen: torch.Generator) -> None:
    mem = CRDMemory(20, 8, num_negatives=5, generator=torch.Generator().manual_seed(0))
    vs = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=1).bfloat16().requires_grad_(True)
    vt = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=1).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ps, pt = mem(vs, vt, torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(2))
        out = crd(ps.bfloat16(), pt.bfloat16(), num_data=20)
    assert ps.dtype == torch.float32 and mem.memory_student.dtype == torch.float32
    assert out.dtype == torch.float32
    out.backward()
    assert vs.grad is not None and torch.isfinite(vs.grad.float()).all()


def test_validation() -> None:
    mem = CRDMemory(10, 4, num_negatives=3)
    v = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        mem(torch.zeros(2, 5), v, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size"):
        mem(v, v, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="int data-set indices"):
        mem.sample(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="momentum"):
        CRDMemory(10, 4, momentum=1.0)
    with pytest.raises(ValueError, match="labels"):
        CRDMemory(10, 4, labels=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="K >= 1"):
        nce_loss(torch.ones(2, 1), num_data=10)
    with pytest.raises(ValueError, match="differ in shape"):
        crd(torch.ones(2, 3), torch.ones(2, 4), num_data=10)


def test_needs_declared() -> None:
    needs = " ".join(NEEDS["crd"])
    assert "data-set indices" in needs and "torch.Generator" in needs and "checkpointed" in needs
