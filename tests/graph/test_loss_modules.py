"""What the loss records ask of the graph: loss-side modules (built from the shapes after the adapters, trained,
kept out of the student), run inputs, several taps per model, warm-ups, standardised logits, module objectives and
the teacher's BatchNorm read from the unfolded teacher. Each value is recomputed a second way from the plain models.
"""

import pytest
import torch
from torch import nn

from kdgraph.errors import SpecError
from kdgraph.graph import TermKind, build_graph
from kdgraph.graph.loss_modules import batchnorm_before
from kdgraph.losses.dkd import dkd
from kdgraph.losses.fsp import fsp
from kdgraph.losses.ofd import ofd_margin_from_bn
from kdgraph.losses.standardise import kl_div_standardised
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict
from kdgraph.trace import trace_model

TEACHER = {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}}
STUDENT = {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}}
PRE = "layer3.0.relu_1:input"  # the tiny teacher's last residual sum, before its ReLU


def models():
    torch.manual_seed(0)
    teacher = create_model(TEACHER["model"], TEACHER["kwargs"]).eval()
    for m in teacher.modules():  # statistics a trained teacher would have, so folding and margins are not trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return create_model(STUDENT["model"], STUDENT["kwargs"]), teacher


def build(distill, num_data=100, **extra):
    spec = spec_from_dict({"teacher": TEACHER, "student": STUDENT, "distill": distill, **extra})
    student, teacher = models()
    built = build_graph(spec, student, teacher, (1, 28, 28), num_data=num_data)
    return spec, student, teacher, built


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10, torch.arange(n) * 7


def tap(model, name, x):
    """A module's output on the plain model, copied before anything in place can change it."""
    seen = {}

    def hook(module, args, output):
        seen["v"] = output.clone()

    handle = model.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["v"]


MODULE_LOSSES = [
    ("vid", {"teacher": "layer3", "student": "block3", "loss": "vid"}),
    ("mgd", {"teacher": "layer3", "student": "block3", "loss": "mgd"}),
    ("crd", {"teacher": "flatten", "student": "flatten", "loss": {"name": "crd", "num_negatives": 32}}),
    ("ofd", {"teacher": PRE, "student": "block3.1", "loss": "ofd"}),
    ("ft", {"teacher": "layer3", "student": "block3", "loss": "ft"}),
    ("cc", {"teacher": "flatten", "student": "flatten", "loss": "cc"}),
    ("reviewkd", {"teacher": ["layer1", "layer2", PRE, "flatten"], "student": ["block1", "block2", "block3", "flatten"],
                  "loss": "reviewkd"}),
]


WAITING_FOR_TARGETS = {"fgd"}  # needs the step inputs targets and image_sizes, passed once detection data lands (#31)


def test_every_loss_with_a_module_is_checked_below():
    from kdgraph.losses import losses

    assert {name for name, _ in MODULE_LOSSES} | WAITING_FOR_TARGETS == {r.name for r in losses()
                                                                          if r.module is not None}


def test_fgd_builds_its_context_modules_and_asks_for_the_boxes_the_graph_does_not_pass_yet():
    from kdgraph.losses.fgd import FGDModule

    pair = {"teacher": "layer3", "student": "block3", "projector": "linear", "loss": "fgd"}
    _, student, _, built = build({"pairs": [pair]})
    graph = built.graph.train()
    module = graph.loss_modules[built.pairs[0].key]
    assert isinstance(module, FGDModule) and module.student.conv_mask.in_channels == 32  # the teacher's width
    assert not any(k.startswith(("student.", "teacher.")) and "conv_mask" in k for k in student.state_dict())
    x, y, index = batch()
    with pytest.raises(ValueError, match="fgd needs the batch's ground-truth boxes and image sizes"):
        graph(x, y, index=index)


@pytest.mark.parametrize("name,pair", MODULE_LOSSES, ids=[m[0] for m in MODULE_LOSSES])
def test_a_loss_module_is_trained_with_the_student_and_kept_out_of_it(name, pair):
    _, student, _, built = build({"pairs": [pair]})
    graph = built.graph.train()
    key = built.pairs[0].key
    module = graph.loss_modules[key]
    assert list(graph.loss_modules) == [key]
    student_keys = set(student.state_dict())
    assert not any(k.startswith(("loss_modules", "memory", "embed", "rng")) for k in student_keys)
    x, y, index = batch()
    out = graph(x, y, index=index)
    out.total.backward()
    frozen = {n for n, _ in module.named_parameters() if n.startswith("paraphraser.")}  # FT: its own objective only
    for n, p in module.named_parameters():
        assert (p.grad is None or not p.grad.abs().sum()) if n in frozen else p.grad.abs().sum() > 0, n
    assert all(p.grad is not None for p in student.parameters())
    saved = nn.ModuleDict({"loss": graph.loss_modules}).state_dict()  # what adapters.safetensors holds (Trainer)
    assert {f"loss.{key}.{k}" for k in module.state_dict()} <= set(saved) and module.state_dict()


def test_crd_takes_the_batch_index_and_the_data_set_size_and_updates_its_bank():
    _, _, _, built = build({"pairs": [MODULE_LOSSES[2][1]]}, num_data=50)
    graph = built.graph.train()
    memory = graph.loss_modules[built.pairs[0].key].memory
    assert memory.memory_student.shape == (50, 128)
    x, y, index = batch()
    before = memory.memory_student.clone()
    graph(x, y, index=index)
    changed = (memory.memory_student != before).any(1).nonzero().flatten()
    assert changed.tolist() == index.tolist()
    with pytest.raises(ValueError, match="needs the batch's data-set positions"):
        graph(x, y)
    with pytest.raises(SpecError, match=r"distill.pairs\[0\].loss: loss 'crd': loss 'crd' needs the training set"):
        build({"pairs": [MODULE_LOSSES[2][1]]}, num_data=None)


def test_ofd_margin_comes_from_the_unfolded_teachers_batchnorm_before_the_tap():
    _, _, teacher, built = build({"pairs": [MODULE_LOSSES[3][1]]})
    layer_map = trace_model(teacher, (1, 28, 28))
    bn = teacher.layer3[0].bn2
    assert batchnorm_before(teacher, layer_map, PRE) is bn  # through the residual sum, its first term
    assert batchnorm_before(teacher, layer_map, "layer3.0.bn2") is bn
    assert batchnorm_before(teacher, layer_map, "layer3") is None  # a ReLU's output
    margin = built.graph.loss_modules[built.pairs[0].key].margin
    assert torch.equal(margin, ofd_margin_from_bn(bn)) and (margin < 0).all()
    assert all(not isinstance(m, nn.BatchNorm2d) for m in built.graph.teachers["teacher"].module.modules())
    with pytest.raises(SpecError, match=r"distill.pairs\[0\].loss: loss 'ofd': ofd reads its margin from the teacher"):
        build({"pairs": [{"teacher": "layer3", "student": "block3", "loss": "ofd"}]})


def test_fsp_reads_two_taps_per_model_each_through_its_own_adapters():
    pair = {"teacher": ["layer1", "layer2"], "student": ["block1", "block3"], "loss": "fsp"}
    _, student, teacher, built = build({"pairs": [pair]})
    report = built.pairs[0]
    assert [t.student.name for t in report.taps] == ["block1", "block3"]
    assert report.taps[0].adapters.student_steps == ["conv1x1 4→8"]  # widths to the teacher's, grids left alone
    assert report.taps[1].adapters.student_steps == []
    graph = built.graph.eval()
    x, y, _ = batch()
    out = graph(x, y)
    teacher.eval()
    with torch.no_grad():
        proj = graph.student_adapters[report.key]
        s1, s2 = proj[0](tap(student, "block1", x)), proj[1](tap(student, "block3", x))
        expected = fsp(s1, s2, tap(teacher, "layer1", x), tap(teacher, "layer2", x))
    torch.testing.assert_close(out.terms[report.label], expected, rtol=1e-4, atol=1e-5)


def test_logit_standardisation_and_dkds_labels_and_a_warm_up():
    logits = {"loss": {"name": "dkd", "beta": 2.0}, "temperature": 2.0, "weight": 3.0, "warmup_epochs": 4,
              "standardise": True}
    _, student, teacher, built = build({"logits": logits})
    graph = built.graph.eval()
    x, y, _ = batch()
    out = graph(x, y)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    z = [(v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + 1e-7) for v in (s, t)]
    expected = dkd(z[0], z[1], alpha=1.0, beta=2.0, temperature=2.0, target=y)
    torch.testing.assert_close(out.terms["logits"], expected, rtol=1e-4, atol=1e-5)
    ce = torch.nn.functional.cross_entropy(s, y)
    torch.testing.assert_close(out.total, ce + 3.0 * 0.25 * expected, rtol=1e-4, atol=1e-5)  # epoch 1 of 4
    graph.set_epoch(3)
    torch.testing.assert_close(graph(x, y).total, ce + 3.0 * expected, rtol=1e-4, atol=1e-5)
    _, student, teacher, built = build({"logits": {"loss": "kl", "temperature": 2.0, "standardise": True}})
    out = built.graph.eval()(x, y)
    with torch.no_grad():
        expected = kl_div_standardised(student(x), teacher(x), temperature=2.0)
    torch.testing.assert_close(out.terms["logits"], expected, rtol=1e-4, atol=1e-5)


def test_a_stage_trains_a_modules_own_objective():
    pair = {"name": "factor", "teacher": "layer3", "student": "block3", "loss": "ft"}
    stages = [{"epochs": 1, "objectives": ["factor"], "ce": False}, {"epochs": 1, "pairs": ["factor"]}]
    _, student, teacher, built = build({"pairs": [pair]}, train={"epochs": 2, "stages": stages})
    graph = built.graph.train()
    objective = next(t for t in graph.terms if t.kind is TermKind.OBJECTIVE)
    assert objective.label == "pair:factor/objective"
    graph.active = frozenset({objective.label})
    x, y, _ = batch()
    out = graph(x, y)
    assert set(out.terms) == {objective.label}
    module = graph.loss_modules["pair:factor"]
    with torch.no_grad():
        feats = tap(teacher, "layer3", x)
        expected = (module.paraphraser(feats) - feats).abs().mean()
    torch.testing.assert_close(out.total, expected, rtol=1e-4, atol=1e-5)
    out.total.backward()
    assert all(p.grad is not None for p in module.paraphraser.parameters())
    assert all(p.grad is None for p in (*module.translator.parameters(), *student.parameters()))
