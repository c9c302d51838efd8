import pytest
import torch
import torch.nn.functional as F

from kdgraph.errors import SpecError
from kdgraph.graph import build_graph
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict
from kdgraph.spec.load import _read_yaml

SPEC = """\
name: g
teacher: {model: "kdgraph:fmnist_resnet"}
student: {model: "kdgraph:fmnist_cnn"}
distill:
  logits: {temperature: 2.0, weight: 0.5}
  pairs:
    - {teacher: layer3, student: block3, weight: 2.0}
    - {teacher: layer2, student: block2, normalize: l2, loss: cosine}
train: {ce_weight: 0.3}
"""


def make(text=SPEC):
    data, index = _read_yaml(text, "spec.yaml")
    spec = spec_from_dict(data, index, "spec.yaml")
    torch.manual_seed(0)
    return spec, create_model(spec.student.model), create_model(spec.teacher.model)


def test_terms_adapters_and_weighted_total():
    spec, student, teacher = make()
    plan = build_graph(spec, student, teacher, (1, 28, 28))
    graph = plan.graph
    assert [t.label for t in graph.terms] == ["ce", "logits", "pair:block3->layer3", "pair:block2->layer2"]
    assert "conv1x1" in " ".join(plan.pairs[0].adapters.student_steps)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    graph.train()
    out = graph(x, y)
    # independent recomputation of every term from the plain models and adapters
    teacher.eval()
    with torch.no_grad():
        t_logits = teacher(x)
        t_stem = teacher.stem(x)
        t2 = teacher.layer2(teacher.layer1(t_stem))
        t3 = teacher.layer3(t2)
    s1 = student.block1(x)
    s2 = student.block2(s1)
    s3 = student.block3(s2)
    s_logits = student.fc(torch.flatten(student.pool(s3), 1))
    ce = F.cross_entropy(s_logits, y)
    p_t = F.softmax(t_logits / 2, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s_logits / 2, 1))).sum(1).mean() * 4
    proj = graph.student_adapters[[t.adapter for t in graph.terms if t.kind == "pair"][0]]
    mse = ((proj(s3) - t3) ** 2).mean()
    s2 = F.interpolate(s2, size=(14, 14), mode="bilinear", align_corners=False)  # student 7x7 resized to 14x14
    a = F.normalize(s2, dim=1).flatten(1)
    b = F.normalize(t2, dim=1).flatten(1)
    cos = (2 - 2 * F.cosine_similarity(a, b, dim=1)).mean()
    expected = {"ce": ce, "logits": kl, "pair:block3->layer3": mse, "pair:block2->layer2": cos}
    for key, value in expected.items():
        assert out.terms[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    total = 0.3 * ce + 0.5 * kl + 2.0 * mse + 1.0 * cos
    assert out.total.item() == pytest.approx(total.item(), rel=1e-4)


def test_teacher_frozen_and_outside_state():
    spec, student, teacher = make()
    graph = build_graph(spec, student, teacher, (1, 28, 28)).graph
    stats = teacher.stem[1].running_mean.clone()
    graph.train()
    assert not any(m.training for m in graph.teacher.modules())
    out = graph(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    out.total.backward()
    assert torch.equal(stats, teacher.stem[1].running_mean)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in graph.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not any(k.startswith(("teacher.", "_teacher")) for k in graph.state_dict())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in graph.parameters()}


def test_unknown_layer_names_key_line_and_nearest():
    spec, student, teacher = make(SPEC.replace("teacher: layer3", "teacher: layer5"))
    with pytest.raises(SpecError) as err:
        build_graph(spec, student, teacher, (1, 28, 28))
    text = str(err.value)
    assert "distill.pairs[0].teacher (line 7)" in text and "layer5" in text and "layer3" in text


def test_unalignable_pair_is_a_spec_error():
    spec, student, teacher = make(SPEC.replace("student: block3, weight: 2.0", "student: fc, weight: 2.0"))
    with pytest.raises(SpecError) as err:
        build_graph(spec, student, teacher, (1, 28, 28))
    assert "distill.pairs[0] (line 7)" in str(err.value) and "cannot be matched" in str(err.value)


def test_teacher_trimmed_when_logits_unused():
    spec, student, teacher = make(SPEC.replace("  logits: {temperature: 2.0, weight: 0.5}\n", ""))
    calls = []
    graph = build_graph(spec, student, teacher, (1, 28, 28)).graph
    teacher.fc.register_forward_hook(lambda *a: calls.append(1))
    graph(torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert calls == []


class UnsqueezedCNN(torch.nn.Module):
    """A student with a 4-D intermediate (``unsqueeze``) and a non-tensor node (``size``): neither is a feature."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x).unsqueeze(1).squeeze(1)
        return self.fc(x.mean((2, 3)).reshape(x.size(0), -1))


@pytest.mark.parametrize("tap, needle, near", [("unsqueeze", "4-D", "conv"), ("size", "not a batch tensor", "mean")])
def test_pair_on_a_layer_without_a_feature_layout_is_a_spec_error(tap, needle, near):
    spec, _, teacher = make(SPEC.replace("student: block3, weight", f"student: {tap}, weight"))
    with pytest.raises(SpecError) as err:
        build_graph(spec, UnsqueezedCNN(), teacher, (1, 28, 28))
    text = str(err.value)
    assert "distill.pairs[0].student (line 7)" in text and needle in text and f"try {near}" in text


class ChannelsLastCNN(torch.nn.Module):
    """A student whose stage output is (B, H, W, C), like a timm Swin stage."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 32, 4, stride=4)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.fc(x.mean((1, 2)))


def test_channels_last_student_map_is_refused_not_misread():
    spec, _, teacher = make(SPEC.replace("student: block3, weight", "student: permute, weight"))
    with pytest.raises(SpecError) as err:
        build_graph(spec, ChannelsLastCNN(), teacher, (1, 28, 28))
    text = str(err.value)
    assert "distill.pairs[0].student (line 7)" in text and "(7, 7, 32)" in text and "channels-last" in text
    assert "try conv" in text


def test_a_loss_taking_labels_gets_the_batch_labels_and_refuses_mixed_targets(monkeypatch):
    from kdgraph.losses import registry
    from kdgraph.spec import spec_from_dict

    monkeypatch.setattr(registry, "_RECORDS", dict(registry._RECORDS))
    seen = {}

    def labelled(s, t, *, temperature=4.0, target=None):
        seen["target"] = target
        return (s - t).pow(2).mean()

    registry.register_loss("labelled", kind="logit", inputs={"labels": "target"})(labelled)
    doc = {"teacher": {"model": "kdgraph:fmnist_resnet"}, "student": {"model": "kdgraph:fmnist_cnn"},
           "distill": {"logits": {"loss": "labelled"}}}
    teacher, student = create_model("kdgraph:fmnist_resnet"), create_model("kdgraph:fmnist_cnn")
    graph = build_graph(spec_from_dict(doc), student, teacher, (1, 28, 28)).graph
    y = torch.tensor([3, 1])
    graph(torch.randn(2, 1, 28, 28), y)
    assert seen["target"] is y
    with pytest.raises(ValueError, match="needs hard labels"):
        graph(torch.randn(2, 1, 28, 28), torch.full((2, 10), 0.1))
    doc["data"] = {"mix": "mixup"}
    with pytest.raises(SpecError, match=r"data.mix: loss 'labelled' at distill.logits.loss needs each image's hard"):
        build_graph(spec_from_dict(doc), student, teacher, (1, 28, 28))
