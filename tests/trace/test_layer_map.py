"""LayerMap contract: names, suffixes, suggestions, shape rules, probe hygiene."""

import json

import pytest
import torch
from torch import nn

from kdgraph.trace import LayerInfo, LayerMap, UnknownLayerError, split_name, trace_model
from kdgraph.trace.layer_map import describe, first_tensor, probe_input


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x) + 0.0
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def tiny_map():
    return trace_model(TinyCNN(), (3, 16, 16), "tiny")


def test_split_name():
    assert split_name("layer3") == ("layer3", "output")
    assert split_name("layer3:output") == ("layer3", "output")
    assert split_name("blocks.5.mlp:input") == ("blocks.5.mlp", "input")
    with pytest.raises(ValueError, match=":input"):
        split_name("layer3:inptu")


def test_describe_layouts():
    assert describe(torch.zeros(2, 8, 4, 4), (3, 16, 16)) == ((8, 4, 4), 8, 4, "map")
    assert describe(torch.zeros(2, 197, 192), (3, 224, 224)) == ((197, 192), 192, None, "tokens")
    assert describe(torch.zeros(2, 10), (3, 16, 16)) == ((10,), 10, None, "vector")
    assert describe(torch.zeros(2, 3, 4, 5, 6), (3, 16, 16)) == ((3, 4, 5, 6), None, None, "other")
    # no stride promise when the model input is not an image
    assert describe(torch.zeros(2, 8, 4, 4), (32,)) == ((8, 4, 4), 8, None, "map")
    # non-tensors and tensors without the batch dim describe nothing
    for value in [(torch.zeros(2, 3),), torch.Size([2, 3]), 7, None, torch.zeros(5, 3), torch.tensor(1.0)]:
        assert describe(value, (3, 16, 16)) == ((), None, None, "other")


def test_first_tensor():
    t = torch.zeros(1)
    assert first_tensor((), {"a": 1, "b": [None, (t,)]}) is t
    assert first_tensor((1, "x"), {}) is None


def test_tiny_cnn_layers(tiny_map):
    assert tiny_map.method == "fx"
    assert tiny_map.input_shape == (3, 16, 16)
    names = tiny_map.names()
    # execution order; submodules right after their last node, inner before outer
    assert names == [
        "stem.0", "stem.1", "stem.2", "stem",
        "block.0", "block.1", "block.2", "block",
        "add", "pool", "flatten", "fc",
    ]
    assert tiny_map["stem"] == LayerInfo("stem", "Sequential", (8, 8, 8), 8, 2, "map")
    assert tiny_map["block.0"] == LayerInfo("block.0", "Conv2d", (16, 4, 4), 16, 4, "map")
    assert tiny_map["add"].kind == "add"
    assert tiny_map["flatten"] == LayerInfo("flatten", "flatten", (16,), 16, None, "vector")
    assert tiny_map["fc"].kind == "Linear" and tiny_map["fc"].shape == (10,)


def test_suffixes(tiny_map):
    assert tiny_map["block:output"] == tiny_map["block"]
    inp = tiny_map["block:input"]
    assert inp.name == "block:input" and inp.shape == (8, 8, 8) and inp.stride == 2 and inp.kind == "Sequential"
    assert tiny_map["stem.0:input"].shape == (3, 16, 16)
    assert tiny_map["fc:input"].shape == (16,)
    assert "block:input" in tiny_map and "block:output" in tiny_map and "block" in tiny_map
    assert "block:bogus" not in tiny_map and "nope" not in tiny_map and 3 not in tiny_map
    assert all(":" not in n for n in tiny_map.names())


def test_unknown_layer_message(tiny_map):
    with pytest.raises(UnknownLayerError) as info:
        tiny_map["blok"]
    err = info.value
    assert isinstance(err, KeyError)
    assert str(err).startswith("no layer 'blok' in tiny; nearest: block")
    assert err.suggestions[0] == "block"
    with pytest.raises(KeyError, match="suffix"):
        tiny_map["block:bogus"]
    with pytest.raises(UnknownLayerError, match="stem"):
        tiny_map["stem.7:input"]


def test_nearest():
    infos = [
        LayerInfo(n, "Conv2d", (4, 2, 2), 4, 2, "map")
        for n in ["layer1", "layer1.0", "layer1.0.conv1", "layer2", "layer3", "layer3.0", "layer3.1", "layer4", "fc"]
    ]
    lm = LayerMap("timm:resnet18", "fx", (3, 8, 8), infos)
    near = lm.nearest("layer5")
    assert len(near) == 5 and set(near[:4]) == {"layer1", "layer2", "layer3", "layer4"}
    # prefix matches: what was typed extends to a real name
    assert "layer1.0.conv1" in lm.nearest("layer1.0.con")
    # a dotted name with a wrong index suggests its ancestor and siblings
    near = lm.nearest("layer3.7")
    assert "layer3" in near and "layer3.0" in near and "layer3.1" in near
    assert lm.nearest("zzzzzzzz") == []
    with pytest.raises(UnknownLayerError, match=r"no layer 'layer5' in timm:resnet18; nearest: layer4"):
        lm["layer5"]
    assert len(lm) == 9 and [i.name for i in lm] == lm.names()


def test_to_json(tiny_map):
    rows = tiny_map.to_json()
    assert len(rows) == len(tiny_map.layers)
    assert rows[0] == {"name": "stem.0", "kind": "Conv2d", "shape": [8, 8, 8], "channels": 8, "stride": 2, "layout": "map"}
    json.dumps(rows)


def test_layer_map_rejects_duplicates_and_bad_method():
    info = LayerInfo("a", "Linear", (3,), 3, None, "vector")
    with pytest.raises(ValueError, match="duplicate"):
        LayerMap("m", "fx", (3,), [info, info])
    with pytest.raises(ValueError, match="method"):
        LayerMap("m", "jit", (3,), [info])


def test_probe_leaves_model_alone():
    torch.manual_seed(0)
    model = TinyCNN().train()
    model.stem[1].eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    rng = torch.get_rng_state()
    trace_model(model, (3, 16, 16))
    assert {name: m.training for name, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BN running stats and num_batches_tracked included
    assert [id(p) for p in model.parameters()] == params
    assert torch.equal(torch.get_rng_state(), rng)


def test_probe_input_follows_model_dtype():
    model = nn.Linear(4, 2).to(torch.float64)
    x = probe_input(model, (4,))
    assert x.shape == (2, 4) and x.dtype == torch.float64
    assert torch.equal(x, probe_input(model, (4,)))  # deterministic
    lm = trace_model(model, (4,))  # the root is traced through: its one op is F.linear
    assert lm.names() == ["linear"] and lm["linear"].shape == (2,) and lm["linear:input"].shape == (4,)


def test_vector_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lm = trace_model(model, (4,), "mlp")
    assert lm.names() == ["0", "1", "2"]
    assert lm["1"] == LayerInfo("1", "ReLU", (8,), 8, None, "vector")
    assert lm["0:input"].shape == (4,)


def test_describe_channels_last_maps_are_not_maps():
    # (B, H, W, C), as timm's Swin stages give: the grid keeps the input's aspect in its first two dims
    assert describe(torch.zeros(2, 4, 4, 128), (3, 64, 64)) == ((4, 4, 128), None, None, "other")
    assert describe(torch.zeros(2, 8, 4, 96), (3, 64, 32)) == ((8, 4, 96), None, None, "other")
    # channels-first maps keep theirs; when C equals the side the two readings agree in shape: stays a map
    assert describe(torch.zeros(2, 96, 8, 4), (3, 64, 32)) == ((96, 8, 4), 96, 8, "map")
    assert describe(torch.zeros(2, 16, 16, 16), (3, 64, 64)) == ((16, 16, 16), 16, 4, "map")
    # a collapsed height (text recognisers) is still channels-first
    assert describe(torch.zeros(2, 512, 1, 32), (1, 32, 128)) == ((512, 1, 32), 512, 32, "map")
