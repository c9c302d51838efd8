"""The probe runs on the meta device: exactly the shapes a real forward gives, and the real forward when meta fails."""

import pytest
import timm
import torch
from torch import nn

from kdgraph.models import create_model
from kdgraph.trace import TraceFallbackWarning, trace_model
from kdgraph.trace import probe as probe_module
from kdgraph.trace.layer_map import probe_input

CASES = [
    ("kdgraph:fmnist_resnet", (1, 28, 28), 10),
    ("kdgraph:fmnist_cnn", (1, 28, 28), 10),
    ("timm:resnet18", (3, 64, 64), 1000),
    ("timm:vit_tiny_patch16_224", (3, 224, 224), 1000),
]


def everything(layer_map):
    """Every description a layer map holds: layers, ``:input`` infos, the model output, how it was traced."""
    inputs = [layer_map[f"{name}:input"] for name in layer_map.names() if f"{name}:input" in layer_map]
    return layer_map.method, layer_map.layers, inputs, layer_map.output, layer_map.fixed_args


@pytest.fixture()
def meta_runs(monkeypatch):
    """Counts the probes that ran on meta tensors to the end."""
    finished = []
    on_meta = probe_module._on_meta

    def counting(*args):
        result = on_meta(*args)
        finished.append(True)
        return result

    monkeypatch.setattr(probe_module, "_on_meta", counting)
    return finished


def real_only(monkeypatch):
    def refuse(*args):
        raise RuntimeError("meta probe disabled by the test")

    monkeypatch.setattr(probe_module, "_on_meta", refuse)


@pytest.mark.parametrize("ref,shape,classes", CASES)
def test_meta_probe_equals_real_probe(ref, shape, classes, meta_runs, monkeypatch):
    torch.manual_seed(0)
    model = create_model(ref).eval()
    on_meta = trace_model(model, shape, ref)
    assert meta_runs == [True]  # the meta probe did the work, no silent fallback
    real_only(monkeypatch)
    on_real = trace_model(model, shape, ref)
    assert everything(on_meta) == everything(on_real)
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert on_meta.logit_count == on_real.logit_count == logits.shape[-1] == classes
    assert on_meta.output.shape == (classes,) and on_meta.output.layout == "vector"


class ReadsAValue(nn.Module):
    """Scales by a Python number read from the batch (``.item()``): fx traces it, meta tensors hold no value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        x = x / (x.abs().max().item() + 1.0)
        return self.fc(x.mean((2, 3)))


def test_model_meta_cannot_run_is_probed_for_real(meta_runs):
    model = ReadsAValue()
    layer_map = trace_model(model, (3, 16, 16), "reads-a-value")
    assert meta_runs == []  # meta failed ...
    assert layer_map.method == "fx"  # ... and the real probe kept the fx path
    assert layer_map["conv"].shape == (4, 8, 8) and layer_map["truediv"].shape == (4, 8, 8)
    assert layer_map.logit_count == 3
    assert all(p.device.type == "cpu" for p in model.parameters())


class Branches(nn.Module):
    """``if x.sum() > 0``: fx cannot trace it, and meta tensors cannot decide it."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.neg = nn.Conv2d(3, 16, 1, stride=4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pos(x) if x.sum() > 0 else self.neg(x)
        return self.head(x.mean((2, 3)))


def test_hooks_path_falls_back_to_a_real_probe(meta_runs):
    model = Branches().eval()
    with pytest.warns(TraceFallbackWarning, match="control flow"):
        layer_map = trace_model(model, (3, 16, 16), "branches")
    assert layer_map.method == "hooks" and meta_runs == []  # meta failed on the branch too
    x = probe_input(model, (3, 16, 16))
    taken = "pos" if x.sum() > 0 else "neg"
    assert layer_map.names() == [taken, "head"]
    assert layer_map[taken].shape == (16, 4, 4) and layer_map.logit_count == 5


def test_hooks_probe_on_meta_equals_real(meta_runs, monkeypatch):
    from kdgraph.trace.hooks import hooks_layer_map

    model = timm.create_model("resnet18", pretrained=False)
    on_meta = hooks_layer_map(model, (3, 64, 64), "r18")
    assert meta_runs == [True]
    real_only(monkeypatch)
    assert everything(on_meta) == everything(hooks_layer_map(model, (3, 64, 64), "r18"))


class Tied(nn.Module):
    """A weight shared by two layers (as in a language model's embedding and head)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_tied_weights_probe_on_meta(meta_runs):
    model = Tied()
    layer_map = trace_model(model, (8,), "tied")
    assert meta_runs == [True] and layer_map.names() == ["a", "b"] and layer_map.logit_count == 8
    assert model.b.weight is model.a.weight and model.a.weight.device.type == "cpu"
