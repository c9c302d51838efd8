"""``forward(self, x, feats=False)``: fx traces it with the flag fixed at its default, instead of falling back."""

import warnings

import pytest
import torch
from torch import nn

from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.trace import FeatureExtractor, TraceFallbackWarning, trace_model
from kdgraph.trace.fx import fixable_defaults
from kdgraph.trace.hooks import HookTaps


class WithFeats(nn.Module):
    """The common way to expose features: a flag that changes what ``forward`` returns."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x, feats=False, pool: str = "avg", scale=None, *, eps: float = 0.0):
        f = self.block(self.stem(x))
        pooled = f.mean((2, 3)) if pool == "avg" else f.amax((2, 3))
        if scale is not None:
            pooled = pooled * scale
        logits = self.head(pooled + eps)
        return (logits, f) if feats else logits


@pytest.fixture()
def model():
    torch.manual_seed(0)
    model = WithFeats()
    for bn in (model.stem[1], model.block[1]):  # BatchNorm that does something, so a fold could be seen
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_fixable_defaults_are_the_plain_values_after_the_input(model):
    assert fixable_defaults(model) == {"feats": False, "pool": "avg", "scale": None, "eps": 0.0}

    class TensorDefault(nn.Module):
        def forward(self, x, bias=torch.zeros(1), *args, dims=(2, 3), **kwargs):
            return x

    assert fixable_defaults(TensorDefault()) == {}


def test_flag_model_traces_with_fx(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        layer_map = trace_model(model, (3, 16, 16), "with-feats")
    assert layer_map.method == "fx"
    assert layer_map.fixed_args == {"feats": False, "pool": "avg", "scale": None, "eps": 0.0}
    assert layer_map["block"].shape == (16, 8, 8) and layer_map["mean"].shape == (16,)
    assert layer_map.logit_count == 5
    # fx's checks on the fixed values are not layers, and no placeholder is left for them
    assert not {"eq", "_assert", "_assert_is_none"} & set(layer_map.names())
    assert not [n for n in layer_map.names() if n.startswith(("feats", "scale", "_assert"))]


def test_tapped_features_equal_hooks_and_plain_forward(model):
    layer_map = trace_model(model, (3, 16, 16), "with-feats")
    taps = ["stem", "block", "head:input"]
    extractor = FeatureExtractor(model, taps, layer_map)
    assert extractor.method == "fx"
    x = torch.randn(4, 3, 16, 16)
    for train in (False, True):  # both of the extractor's graphs
        model.train(train)
        extractor.train(train)
        with torch.no_grad():
            ours = extractor(x)
            hooked = HookTaps(model, taps).run(model, x)
            logits, features = model(x, feats=True)
        for tap in taps:
            assert torch.equal(ours[tap], hooked[tap]), (train, tap)
        assert torch.equal(ours["block"], features) and torch.equal(ours["output"], logits)
        assert torch.equal(ours["output"], hooked["output"])


def test_frozen_teacher_of_flag_model_folds_and_matches(model):
    layer_map = trace_model(model, (3, 16, 16), "with-feats")
    frozen = FrozenTeacher(FeatureExtractor(model, ["block"], layer_map, keep_output=True))
    assert frozen.folded == 2
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        logits, features = model(x, feats=True)
    got = frozen(x)
    torch.testing.assert_close(got["block"], features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["output"], logits, rtol=1e-5, atol=1e-5)


class TensorFlag(nn.Module):
    """A tensor default used in control flow: nothing to fix, so fx still fails and hooks take over."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, gate=torch.ones(())):
        return self.conv(x) if gate > 0 else x


def test_unfixable_default_still_falls_back_to_hooks():
    with pytest.warns(TraceFallbackWarning, match="control flow"):
        layer_map = trace_model(TensorFlag(), (3, 16, 16), "tensor-flag")
    assert layer_map.method == "hooks" and layer_map.fixed_args == {}
    assert layer_map.names() == ["conv"]
