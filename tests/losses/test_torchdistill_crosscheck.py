"""kdgraph's losses against torchdistill's (an independent implementation, `pip install .[test]`), float64.

Every loss both have gets the same tensors (and the same weights where a method has trainable parts, copied across)
and must give the same value to rounding, or, where kdgraph differs on purpose, the relation docs/losses.md
("Cross-check against torchdistill") states, so the test fails if either side changes. The guard below only skips
on a machine without the test extra; CI installs it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

td = pytest.importorskip("torchdistill.losses.mid_level")
wrapper = pytest.importorskip("torchdistill.models.wrapper")

from kdgraph.losses import get_loss  # noqa: E402
from kdgraph.losses.cc import CCEmbeddings, cc, cc_term  # noqa: E402
from kdgraph.losses.crd import CRDEmbed, CRDMemory, crd  # noqa: E402
from kdgraph.losses.dist_kd import dist_kd  # noqa: E402
from kdgraph.losses.feature import logsum  # noqa: E402
from kdgraph.losses.fsp import fsp, fsp_matrix  # noqa: E402
from kdgraph.losses.ft import FactorTransfer, ft_term  # noqa: E402
from kdgraph.losses.logits import cross_entropy, kl_div  # noqa: E402
from kdgraph.losses.review import ABF, hcl  # noqa: E402
from kdgraph.losses.standardise import kl_div_standardised  # noqa: E402
from kdgraph.losses.vid import VIDRegressor, vid_term  # noqa: E402

RTOL = 1e-10
F64 = torch.float64


def io(value, key: str = "output", path: str = "x") -> dict:
    """torchdistill's io dict: module path -> {'input'/'output': tensor}."""
    return {path: {key: value}}


def pair(**extra) -> dict:
    """A torchdistill pair config reading path 'x' of each model's io dict."""
    return {"p": {"student": {"path": "x", "io": "output"}, "teacher": {"path": "x", "io": "output"}, **extra}}


def close(got, want, rtol: float = RTOL) -> None:
    got, want = (float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in (got, want))
    assert got == pytest.approx(want, rel=rtol, abs=1e-300), (got, want)


def copy_params(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Every parameter and buffer of ``src`` into ``dst``, in order (the two modules are built alike)."""
    for kind in ("parameters", "buffers"):
        a, b = list(getattr(src, kind)()), list(getattr(dst, kind)())
        assert [x.shape for x in a] == [y.shape for y in b], kind
        with torch.no_grad():
            for x, y in zip(a, b):
                y.copy_(x)


@pytest.fixture
def g() -> torch.Generator:
    return torch.Generator().manual_seed(33)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=F64)


# ---------------------------------------------------------------------------------------------- logit losses
def test_kd_equals_and_the_weighted_sum_with_ce(g):
    s, t, y = randn(g, 6, 10) * 3, randn(g, 6, 10) * 3, torch.randint(10, (6,), generator=g)
    soft = td.KDLoss("x", "output", "x", "output", temperature=4.0, alpha=0)  # alpha 0: the divergence alone
    close(soft(io(s), io(t), y), kl_div(s, t, temperature=4.0, t_squared=False))
    # torchdistill's alpha CE + beta T^2 KL is kdgraph's ce_weight CE + weight kl (the T^2 inside kl_div)
    mixed = td.KDLoss("x", "output", "x", "output", temperature=4.0, alpha=0.1, beta=0.9)
    close(mixed(io(s), io(t), y), 0.1 * cross_entropy(s, y) + 0.9 * kl_div(s, t, temperature=4.0))


def test_logit_standardisation_equals(g):
    s, t, y = randn(g, 5, 10) * 2 + 1, randn(g, 5, 10) * 5, torch.randint(10, (5,), generator=g)
    soft = td.LogitStdKDLoss("x", "output", "x", "output", temperature=2.0, alpha=0)
    close(soft(io(s), io(t), y), kl_div_standardised(s, t, temperature=2.0, t_squared=False))
    mixed = td.LogitStdKDLoss("x", "output", "x", "output", temperature=2.0, alpha=0.1, beta=9.0)
    close(mixed(io(s), io(t), y), 0.1 * cross_entropy(s, y) + 9.0 * kl_div_standardised(s, t, temperature=2.0))


def test_dist_differs_only_where_eps_enters(g):
    s, t = randn(g, 8, 10) * 2, randn(g, 8, 10) * 2
    for beta, gamma, tau in ((1.0, 1.0, 1.0), (2.0, 2.0, 4.0)):
        theirs = td.DISTLoss("x", "output", "x", "output", beta=beta, gamma=gamma, tau=tau)(io(s), io(t))
        # torchdistill: torch's cosine_similarity, each norm clamped at eps (no-op here); kdgraph: the official
        # code's eps added to the product of the norms. Without eps the two are the same formula.
        close(theirs, dist_kd(s, t, beta=beta, gamma=gamma, temperature=tau, eps=0.0), 1e-12)
        ours = dist_kd(s, t, beta=beta, gamma=gamma, temperature=tau)
        assert ours.item() != theirs.item() and ours.item() == pytest.approx(theirs.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- feature losses
def test_at_equals_torchdistills_code_mode_on_one_grid_and_pools_otherwise(g):
    s, t = randn(g, 4, 3, 5, 5), randn(g, 4, 7, 5, 5)
    theirs = td.ATLoss(pair(weight=1), mode="code")
    close(theirs(io(s), io(t)), get_loss("at").fn(s, t))
    # torchdistill needs one grid (it resizes nothing); kdgraph pools the larger map first (RepDistiller)
    big = randn(g, 4, 7, 10, 10)
    with pytest.raises(RuntimeError):
        theirs(io(s), io(big))
    close(theirs(io(s), io(F.adaptive_avg_pool2d(big, 5))), get_loss("at").fn(s, big))
    upsampled = F.interpolate(s, size=(10, 10), mode="bilinear", align_corners=False)  # kdgraph before issue #33
    close(theirs(io(upsampled), io(big)), get_loss("at").fn(s, big, grid="interpolate"))


def test_fsp_same_flow_matrix_other_reduction_and_pooling(g):
    s1, s2, t1, t2 = randn(g, 3, 4, 6, 6), randn(g, 3, 5, 6, 6), randn(g, 3, 4, 6, 6), randn(g, 3, 5, 6, 6)
    flow = td.FSPLoss.compute_fsp_matrix
    torch.testing.assert_close(flow(s1, s2), fsp_matrix(s1, s2), rtol=RTOL, atol=0)
    pairs = {"p": {"student_first": {"path": "a", "io": "output"}, "student_second": {"path": "b", "io": "output"},
                   "teacher_first": {"path": "a", "io": "output"}, "teacher_second": {"path": "b", "io": "output"},
                   "weight": 1}}
    theirs = td.FSPLoss(pairs)({"a": {"output": s1}, "b": {"output": s2}}, {"a": {"output": t1}, "b": {"output": t2}})
    diff = fsp_matrix(s1, s2) - fsp_matrix(t1, t2)
    # torchdistill: sum over (b, j) of the L2 norm over i, / B; kdgraph: the paper's squared Frobenius norm, / B
    close(theirs, torch.linalg.vector_norm(diff, dim=1).sum() / 3)
    close(fsp(s1, s2, t1, t2), (diff * diff).sum() / 3)
    # taps of different grids: torchdistill max-pools the larger map, kdgraph average-pools it (RepDistiller)
    coarse = randn(g, 3, 5, 3, 3)
    torch.testing.assert_close(flow(s1, coarse), fsp_matrix(F.adaptive_max_pool2d(s1, 3), coarse), rtol=RTOL, atol=0)
    assert not torch.allclose(flow(s1, coarse), fsp_matrix(s1, coarse))


def test_ab_equals(g):
    s, t = randn(g, 4, 3, 5, 5) * 2, randn(g, 4, 3, 5, 5)
    theirs = td.AltActTransferLoss(pair(weight=1), margin=1.0, reduction="mean")(io(s), io(t))
    close(theirs, get_loss("ab").fn(s, t, margin=1.0))
    theirs = td.AltActTransferLoss(pair(weight=1), margin=0.5, reduction="mean")(io(s), io(t))
    close(theirs, get_loss("ab").fn(s, t, margin=0.5))


def test_vid_equals_with_the_regressor_copied(g):
    s, t = randn(g, 3, 4, 5, 5), randn(g, 3, 6, 5, 5)
    theirs_reg = wrapper.Regressor4VID(4, 6, 6, eps=1e-5, init_pred_var=5.0).double()
    ours = VIDRegressor(4, 6, init_var=5.0, eps=1e-5).double()
    torch.testing.assert_close(ours.log_scale, theirs_reg.soft_plus_param, rtol=1e-7, atol=0)  # the same init
    with torch.no_grad():
        for a, b in zip(theirs_reg.regressor.parameters(), ours.regressor.parameters()):
            b.copy_(a)
        theirs_reg.soft_plus_param.copy_(randn(g, 6))  # a trained state, not the init
        ours.log_scale.copy_(theirs_reg.soft_plus_param)
    theirs = td.VIDLoss(pair(weight=1))({"x": {"output": theirs_reg(s)}}, io(t))
    close(theirs, vid_term(s, t, module=ours))


def test_ft_equals_with_paraphraser_and_translator_copied(g):
    s, t = randn(g, 3, 4, 5, 5), randn(g, 3, 8, 5, 5)
    ours = FactorTransfer(4, 8, rate=0.5).double()
    # kdgraph follows the official code: no BatchNorm in the paraphraser and translator (torchdistill's default has it)
    para = wrapper.Paraphraser4FactorTransfer(0.5, 8, uses_bn=False, uses_decoder=False).double()
    trans = wrapper.Translator4FactorTransfer(4, 4, uses_bn=False).double()
    copy_params(para, ours.paraphraser)
    copy_params(trans, ours.translator)
    theirs = td.FTLoss(p=1, reduction="mean")({"translator": {"output": trans(s)}},
                                               {"paraphraser": {"output": para(t)}})
    close(theirs, ft_term(s, t, module=ours, p=1))
    para.uses_decoder = True  # the paraphraser's pre-stage: the same reconstruction
    torch.testing.assert_close(para(t), ours.paraphraser(t), rtol=RTOL, atol=1e-13)


# ---------------------------------------------------------------------------------------------- relational losses
def test_pkt_equals(g):
    s, t = randn(g, 7, 5), randn(g, 7, 9)
    theirs = td.PKTLoss("x", "output", "x", "output")(io(s), io(t))
    close(theirs, get_loss("pkt").fn(s, t))


def test_sp_differs_in_the_row_norm_only(g):
    s, t = randn(g, 6, 3, 2, 2), randn(g, 6, 5, 2, 2)
    theirs = td.SPKDLoss("x", "x", reduction="batchmean")
    gram_s, gram_t = s.flatten(1) @ s.flatten(1).T, t.flatten(1) @ t.flatten(1).T

    def sp_with(p: float) -> torch.Tensor:  # (1/B^2) ||G~t - G~s||_F^2 with the rows normalised in the p-norm
        return ((F.normalize(gram_t, p=p, dim=1) - F.normalize(gram_s, p=p, dim=1)) ** 2).sum() / 36

    # torchdistill calls normalize(G, 1): the 1 is normalize's p, so its rows are L1-normalised; kdgraph's are
    # L2-normalised, as the paper's G~ and RepDistiller's F.normalize(G)
    close(theirs(io(s), io(t)), sp_with(1.0))
    close(get_loss("sp").fn(s, t), sp_with(2.0))
    torch.testing.assert_close(theirs.matmul_and_normalize(s), F.normalize(gram_s, p=1.0, dim=1), rtol=RTOL, atol=0)


def test_rkd_equals(g):
    s, t = randn(g, 6, 5), randn(g, 6, 8)
    theirs = td.RKDLoss("x", "x", dist_factor=25.0, angle_factor=50.0, reduction="mean")(io(s), io(t))
    close(theirs, get_loss("rkd").fn(s, t, distance_weight=25.0, angle_weight=50.0))


def test_cc_is_torchdistills_norm_squared_and_embeds_on_the_unit_sphere(g):
    s, t = randn(g, 6, 5), randn(g, 6, 5)
    theirs = td.CCKDLoss("x", "x", kernel_config={"type": "gaussian", "gamma": 0.4, "max_p": 2},
                         reduction="batchmean")
    unsquared = theirs(io(s), io(t))
    close(cc(s, t, squared=False), unsquared)  # the zoo spec's form (torchdistill's weight 0.003 is for it)
    close(cc(s, t), 36 * unsquared**2)  # the paper's squared norm, kdgraph's default: B^2 times the square
    # the embedding heads: both a linear layer per model; kdgraph's also L2-normalises (the RBF reading)
    module = CCEmbeddings(5, 5, dim=4).double()
    lin_s, lin_t = torch.nn.Linear(5, 4).double(), torch.nn.Linear(5, 4).double()
    copy_params(lin_s, module.student.linear)
    copy_params(lin_t, module.teacher.linear)
    theirs_embedded = theirs(io(F.normalize(lin_s(s), dim=1)), io(F.normalize(lin_t(t), dim=1)))
    close(cc_term(s, t, module=module, squared=False), theirs_embedded)


@pytest.mark.parametrize("n", [20, 60])  # kdgraph scores against the whole bank at 20 rows, gathers rows at 60
def test_crd_equals_over_two_steps_with_the_same_banks_and_negatives(g, n):
    dim, k, b = 4, 6, 5
    theirs = td.CRDLoss("s", "empty", "t", input_size=dim, output_size=n, num_negative_samples=k, num_samples=n,
                        temperature=0.07, momentum=0.5).double()
    theirs.params[1] = 0.07  # its constants live in a float32 buffer: 0.07 rounded to float32 otherwise
    ours = CRDMemory(n, dim, num_negatives=k, temperature=0.07, momentum=0.5).double()
    ours.memory_student.copy_(theirs.memory_v1)  # memory_v1 holds the student's embeddings, memory_v2 the teacher's
    ours.memory_teacher.copy_(theirs.memory_v2)
    head_s, head_t = torch.nn.Linear(3, dim).double(), torch.nn.Linear(7, dim).double()
    embed_s, embed_t = CRDEmbed(3, dim).double(), CRDEmbed(7, dim).double()
    copy_params(head_s, embed_s.linear)
    copy_params(head_t, embed_t.linear)
    norm_s, norm_t = wrapper.Normalizer4CRD(head_s), wrapper.Normalizer4CRD(head_t)
    for _ in range(2):  # the first step sets Z, the second uses it and the updated banks
        fs, ft = randn(g, b, 3), randn(g, b, 7)
        index = torch.randperm(n, generator=g)[:b]
        contrast = torch.cat([index[:, None], torch.randint(n, (b, k), generator=g)], dim=1)
        torch.testing.assert_close(norm_s(fs), embed_s(fs), rtol=RTOL, atol=0)
        want = theirs({"s": {"output": norm_s(fs)}, "empty": {"input": {"pos_idx": index, "contrast_idx": contrast}}},
                      {"t": {"output": norm_t(ft)}})
        scores = ours(embed_s(fs), embed_t(ft), index, contrast_index=contrast)
        close(crd(*scores, num_data=n), want.item())
        torch.testing.assert_close(ours.memory_student, theirs.memory_v1, rtol=RTOL, atol=1e-15)
        torch.testing.assert_close(ours.memory_teacher, theirs.memory_v2, rtol=RTOL, atol=1e-15)
        close(ours.z_student, theirs.params[2])
        close(ours.z_teacher, theirs.params[3])


# ---------------------------------------------------------------------------------------------- method parts
def test_reviewkd_hcl_and_fusion_equal(g):
    s, t = randn(g, 2, 3, 8, 8), randn(g, 2, 3, 8, 8)
    theirs = td.HierarchicalContextLoss("x", "output", "x", "output", output_sizes=[4, 2, 1])
    close(theirs({"x": {"output": (s, None)}}, io(t)), hcl(s, t, levels=(4, 2, 1)))
    small = randn(g, 2, 3, 4, 4)  # level 4 is skipped on a 4x4 map by both
    close(theirs({"x": {"output": (small, None)}}, io(small * 0.5)), hcl(small, small * 0.5))
    # one attention-based fusion block, its weights copied; both in training mode (BatchNorm on batch statistics)
    their_abf = wrapper.AttentionBasedFusion(5, 4, 3, uses_attention=True).double()
    our_abf = ABF(5, 4, 3, fuse=True).double()
    copy_params(their_abf, our_abf)
    x, residual = randn(g, 2, 5, 4, 4), randn(g, 2, 4, 2, 2)
    their_out, their_res = their_abf(x, residual, 4)
    our_out, our_res = our_abf(x, residual)
    torch.testing.assert_close(our_out, their_out, rtol=RTOL, atol=1e-13)
    torch.testing.assert_close(our_res, their_res, rtol=RTOL, atol=1e-13)


def test_ickd_is_torchdistills_chsim_times_the_batch(g):
    s, t = randn(g, 4, 3, 5, 5), randn(g, 4, 3, 5, 5)
    theirs = td.ChSimLoss(pair(weight=1))(io(s), io(t))
    # torchdistill divides by C B^2, the official CIFAR-100 code (kdgraph) by C B
    close(get_loss("ickd").fn(s, t), 4 * theirs)


def test_srd_is_twice_logsum_plus_the_plain_divergence(g):
    fs, ft = randn(g, 5, 6), randn(g, 5, 6)
    zs, zt = randn(g, 5, 10), randn(g, 5, 10)
    theirs = td.SRDLoss("f", "output", "f", "output", "z", "output", "z", "output", exponent=4.0, temperature=1.0)
    got = theirs({"f": {"output": fs}, "z": {"output": zs}}, {"f": {"output": ft}, "z": {"output": zt}})
    # kdgraph's projector recipe: 2 logsum(alpha = 4) on the features + kl at T = 1 (T^2 = 1)
    close(got, 2 * logsum(fs, ft, alpha=4.0) + kl_div(zs, zt, temperature=1.0))
    assert math.isfinite(got.item())
