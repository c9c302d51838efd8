"""Hook fallback: untraceable models still get a LayerMap and an extractor."""

import warnings

import pytest
import torch
from torch import nn

from kdgraph.trace import FeatureExtractor, TraceFallbackWarning, UnknownLayerError, trace_model
from kdgraph.trace.hooks import HookTaps, hooks_layer_map


class DataDependent(nn.Module):
    """``if x.sum() > 0`` cannot be traced by torch.fx."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pos = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.neg = nn.Conv2d(8, 16, 1, stride=2)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.pos(x) if x.sum() > 0 else self.neg(x)
        x = self.act(x)
        x = self.act(x * 2)  # the same module, called twice
        return self.head(x.mean((2, 3)))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return DataDependent().eval()


def test_falls_back_to_hooks_with_warning(model):
    with pytest.warns(TraceFallbackWarning, match="control flow"):
        lm = trace_model(model, (3, 16, 16), "dd")
    assert lm.method == "hooks"
    # only modules that ran, in order of completion, first call for reused modules
    assert lm.names() == ["stem.0", "stem.1", "stem.2", "stem", "pos", "act", "head"]
    assert lm["stem"].shape == (8, 8, 8) and lm["stem"].stride == 2 and lm["stem"].kind == "Sequential"
    assert lm["pos"].shape == (16, 4, 4) and lm["pos"].stride == 4
    assert lm["pos:input"].shape == (8, 8, 8) and lm["pos:input"].name == "pos:input"
    assert lm["head"].layout == "vector" and lm["head"].channels == 5
    with pytest.raises(UnknownLayerError, match="only module names"):
        lm["add"]


def test_hook_extractor_matches_manual_forward(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceFallbackWarning)
        lm = trace_model(model, (3, 16, 16), "dd")
    taps = ["stem", "pos:input", "act", "head:input"]
    ext = FeatureExtractor(model, taps, lm)
    assert ext.method == "hooks" and ext.model is model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = ext(x)
        s = model.stem(x)
        p = model.pos(s)
        a = torch.relu(p)
        logits = model(x)
    assert list(out) == taps + ["output"]
    assert torch.equal(out["stem"], s) and torch.equal(out["pos:input"], s)
    assert torch.equal(out["act"], a)  # first call of the reused module
    assert torch.allclose(out["head:input"], torch.relu(a * 2).mean((2, 3)))
    assert torch.equal(out["output"], logits)
    # hooks only live during the extractor's forward
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_hook_extractor_keep_output_false_stops_early(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceFallbackWarning)
        lm = trace_model(model, (3, 16, 16), "dd")
    ext = FeatureExtractor(model, ["stem"], lm, keep_output=False)
    calls = []
    handle = model.head.register_forward_hook(lambda *a: calls.append(1))
    out = ext(torch.randn(2, 3, 16, 16))
    handle.remove()
    assert list(out) == ["stem"] and out["stem"].shape == (2, 8, 8, 8)
    assert calls == []  # nothing after the last tap ran


def test_hook_extractor_keeps_parameters_and_trains(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceFallbackWarning)
        lm = trace_model(model, (3, 16, 16), "dd")
    ext = FeatureExtractor(model, ["stem"], lm)
    assert [id(p) for p in ext.parameters()] == [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.stem[0].weight.detach().clone()
    out = ext(torch.randn(2, 3, 16, 16))
    (out["stem"].pow(2).mean() + out["output"].sum()).backward()
    opt.step()
    assert not torch.equal(before, model.stem[0].weight)


def test_hook_taps_validate_names(model):
    with pytest.raises(ValueError, match="not a submodule"):
        HookTaps(model, ["stem.9"])
    with pytest.raises(ValueError, match="name a submodule"):
        HookTaps(model, [":input"])


def test_hooks_layer_map_directly_on_traceable_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).train()
    lm = hooks_layer_map(model, (4,), "mlp")
    assert lm.method == "hooks" and lm.names() == ["0", "1", "2"]
    assert lm["2:input"].shape == (8,)
    assert model.training and all(m.training for m in model)


def test_bad_input_shape_is_reported_not_swallowed(model):
    with pytest.raises(ValueError, match="probe forward with input shape"):
        trace_model(model, (5, 16, 16), "dd")
