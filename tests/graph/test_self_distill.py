import pytest
import torch
import torch.nn.functional as F

from kdgraph.align.aux_heads import AuxHead
from kdgraph.errors import SpecError
from kdgraph.graph import TermKind, build_graph
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict
from kdgraph.train import train

DOC = {
    "teacher": "self",
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "self_distill": {"heads": ["block1", "block2"], "alpha": 0.3, "feature_weight": 0.03, "temperature": 3.0},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 96,
             "test_subset": 64},
    "train": {"epochs": 1},
}


def make(**changes):
    doc = dict(DOC, **changes)
    spec = spec_from_dict(doc)
    torch.manual_seed(0)
    student = create_model(spec.student.model, spec.student.kwargs)
    return spec, student, build_graph(spec, student, None, (1, 28, 28))


def test_heads_terms_and_formulas():
    spec, student, plan = make()
    graph = plan.graph.train()
    labels = [t.label for t in graph.terms]
    assert labels == ["ce", "head:block1/soft", "head:block1/ce", "head:block1/feature", "head:block2/soft",
                      "head:block2/ce", "head:block2/feature"]
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    out = graph(x, y)
    # independent recomputation from the plain student and the heads
    f1 = student.block1(x)
    f2 = student.block2(f1)
    h_deep = torch.flatten(student.pool(student.block3(f2)), 1)
    q_deep = student.fc(h_deep)
    expected_total = F.cross_entropy(q_deep, y)
    for i, feat in enumerate([f1, f2]):
        head = graph.student_adapters[["head:block1", "head:block2"][i]]
        q, h = head(feat)
        p_t = torch.softmax(q_deep / 3.0, dim=1)
        soft = -(p_t * torch.log_softmax(q / 3.0, dim=1)).sum(1).mean()  # no T² (published code)
        ce = F.cross_entropy(q, y)
        dist = torch.sqrt(((head.adapt(h) - h_deep) ** 2).sum())
        name = ["block1", "block2"][i]
        assert out.terms[f"head:{name}/soft"].item() == pytest.approx(soft.item(), rel=1e-5)
        assert out.terms[f"head:{name}/ce"].item() == pytest.approx(ce.item(), rel=1e-5)
        assert out.terms[f"head:{name}/feature"].item() == pytest.approx(dist.item(), rel=1e-5)
        expected_total = expected_total + 0.3 * soft + 0.7 * ce + 0.03 * dist
    assert out.total.item() == pytest.approx(expected_total.item(), rel=1e-5)


def test_targets_are_detached():
    """The shallow terms send no gradient into the deepest classifier or the deepest stage."""
    spec, student, plan = make(train={"epochs": 1, "ce_weight": 0})
    graph = plan.graph.train()
    out = graph(torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]))
    out.total.backward()
    assert student.fc.weight.grad is None
    assert all(p.grad is None for p in student.block3.parameters())
    assert student.block1[0].weight.grad is not None and student.block1[0].weight.grad.abs().sum() > 0


def test_sepconv_head_reaches_deepest_shape_and_attention():
    head = AuxHead((16, 28, 28), (64, 7, 7), num_classes=10, deep_feature_dim=64, kind="sepconv", attention=True)
    q, h = head(torch.randn(2, 16, 28, 28))
    assert q.shape == (2, 10) and h.shape == (2, 64)
    strides = [m.stride[0] for m in head.bottleneck.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert strides.count(2) == 2  # 28 -> 14 -> 7
    linear = AuxHead((16, 28, 28), (64, 7, 7), 10, 64, kind="linear")
    assert linear(torch.randn(2, 16, 28, 28))[0].shape == (2, 10)


def test_bad_self_distill_specs():
    with pytest.raises(SpecError, match="needs `self_distill"):
        spec_from_dict(dict(DOC, self_distill=None))
    with pytest.raises(SpecError, match="with `teacher: self` only"):
        spec_from_dict(dict(DOC, teacher=None))
    with pytest.raises(SpecError, match="block9"):
        make(self_distill={"heads": ["block9"]})
    with pytest.raises(SpecError, match="attach to"):
        make(self_distill={"heads": ["fc"]})


def test_training_logs_every_head_and_the_ensemble():
    result = train(spec_from_dict(DOC), write=False, quiet=True)
    row = result.metrics[0]
    for key in ("val_top1/deepest", "val_top1/block1", "val_top1/block2", "val_top1/ensemble"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["val_top1/deepest"] == row["val_top1"]
    # the exported student is the plain architecture
    plain = create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 16]})
    plain.load_state_dict(result.student.state_dict(), strict=True)


def test_export_with_heads(tmp_path):
    from safetensors.torch import load_file

    from kdgraph.rundir.export import export_student

    doc = dict(DOC, output=str(tmp_path / "run"))
    train(spec_from_dict(doc), quiet=True)
    plain = load_file(str(export_student(tmp_path / "run", tmp_path / "plain.safetensors")))
    assert not any(k.startswith("heads.") for k in plain)
    full = load_file(str(export_student(tmp_path / "run", tmp_path / "heads.safetensors", with_heads=True)))
    assert any(k.startswith("heads.head0.") for k in full) and any(k.startswith("heads.head1.") for k in full)
    create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 16]}).load_state_dict(plain, strict=True)


def test_t_squared_linear_heads_and_deep_layer_overrides():
    base = {"heads": ["block1"], "temperature": 2.0, "feature_weight": 0.5}
    _, student, plain = make(self_distill=dict(base))
    _, _, scaled = make(self_distill=dict(base, t_squared=True))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    a, b = plain.graph(x, y).terms, scaled.graph(x, y).terms
    assert b["head:block1/soft"].item() == pytest.approx(4.0 * a["head:block1/soft"].item(), rel=1e-5)
    _, _, linear = make(self_distill=dict(base, head="linear", attention=False))
    head = linear.graph.student_adapters["head:block1"]
    assert not any(isinstance(m, torch.nn.Conv2d) for m in head.modules())
    _, _, custom = make(self_distill=dict(base, deep_map="block2", deep_feature="pool"))
    term = next(t for t in custom.graph.terms if t.kind is TermKind.HEAD_FEATURE)
    assert term.teacher_tap == "pool"
    strides = [m.stride[0] for m in custom.graph.student_adapters["head:block1"].bottleneck.modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert strides.count(2) == 1  # block1 14x14 -> block2 7x7
