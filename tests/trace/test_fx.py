"""fx strategy on real models (random weights): vocabulary, shapes, timm leaf modules."""

import warnings

import pytest
import timm
import torch
import torchvision
from timm.models._features_fx import create_feature_extractor as timm_create_feature_extractor
from timm.models._features_fx import get_graph_node_names as timm_get_graph_node_names
from torch import nn

from kdgraph.trace import FeatureExtractor, trace_model
from kdgraph.trace.fx import NodeIndex, trace_graph, tracer_kwargs


@pytest.fixture(scope="module")
def resnet18():
    return timm.create_model("resnet18", pretrained=False).eval()


@pytest.fixture(scope="module")
def resnet_map(resnet18):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no train/eval graph warnings
        return trace_model(resnet18, (3, 64, 64), "timm:resnet18")


def test_resnet18_known_shapes(resnet_map):
    lm = resnet_map
    assert lm.method == "fx" and lm.model == "timm:resnet18"
    expected = {  # name: (shape, stride) at 64 px
        "conv1": ((64, 32, 32), 2),
        "maxpool": ((64, 16, 16), 4),
        "layer1": ((64, 16, 16), 4),
        "layer2": ((128, 8, 8), 8),
        "layer3": ((256, 4, 4), 16),
        "layer4": ((512, 2, 2), 32),
        "layer3.1.act2": ((256, 4, 4), 16),
    }
    for name, (shape, stride) in expected.items():
        info = lm[name]
        assert (info.shape, info.stride, info.channels, info.layout) == (shape, stride, shape[0], "map"), name
    assert lm["layer3"].kind == "Sequential" and lm["layer3.1"].kind == "BasicBlock"
    assert lm["layer3.0.add"].kind == "add"
    assert lm["fc"].kind == "Linear" and lm["fc"].layout == "vector" and lm["fc"].shape == (1000,)
    assert lm["global_pool"].shape == (512,)
    assert lm["layer3:input"].shape == (128, 8, 8)
    assert lm["layer1.0.conv1:input"].shape == (64, 16, 16)
    assert lm.names()[-1] == "fc"


def test_vocabulary_is_torchvisions_plus_submodules(resnet18, resnet_map):
    _, eval_nodes = timm_get_graph_node_names(resnet18)
    names = resnet_map.names()
    # every node name except the placeholder, in the same order
    assert [n for n in names if n in set(eval_nodes)] == [n for n in eval_nodes if n != "x"]
    # the rest are submodule paths owning nodes
    modules = dict(resnet18.named_modules())
    extra = [n for n in names if n not in set(eval_nodes)]
    assert set(extra) >= {"layer1", "layer1.0", "layer4.1", "layer2.0.downsample", "global_pool"}
    assert all(n in modules for n in extra)
    assert "x" not in names and "output" not in names


def test_prefixes_match_torchvision_create_feature_extractor(resnet18, resnet_map):
    """torchvision's create_feature_extractor accepts submodule prefixes; ours mean the same thing."""
    taps = ["layer1", "layer3.1", "layer2.0.downsample", "layer4.0.add", "global_pool"]
    reference = timm_create_feature_extractor(resnet18, {t: t for t in taps}).eval()
    ours = FeatureExtractor(resnet18, taps, resnet_map, keep_output=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_out, our_out = reference(x), ours(x)
    assert list(our_out) == taps
    for t in taps:
        if t == "layer4.0.add":  # an in-place ReLU follows the sum: torchvision returns what the ReLU left
            assert torch.equal(ref_out[t], our_out[t].relu()) and (our_out[t] < 0).any(), t
        else:
            assert torch.equal(ref_out[t], our_out[t]), t


def test_vit_tiny_tokens():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    lm = trace_model(model, (3, 224, 224), "timm:vit_tiny_patch16_224")
    assert lm.method == "fx"
    for name in ["blocks.0", "blocks.5", "blocks.5.mlp", "blocks.11", "norm", "blocks.3.attn"]:
        info = lm[name]
        assert (info.layout, info.shape, info.channels, info.stride) == ("tokens", (197, 192), 192, None), name
    assert lm["blocks.5.mlp.fc1"].shape == (197, 768)
    assert lm["blocks.5"].kind == "Block" and lm["blocks.5.mlp"].kind == "Mlp"
    assert lm["patch_embed.proj"] == lm["patch_embed.proj"].__class__(
        "patch_embed.proj", "Conv2d", (192, 14, 14), 192, 16, "map"
    )
    assert lm["patch_embed.flatten"].kind == "flatten"  # a call_method node
    assert lm["blocks.0:input"].shape == (197, 192)
    assert lm["head"].layout == "vector" and lm["head"].shape == (1000,)
    # parameters (get_attr nodes) and placeholders are not layers
    assert "cls_token" not in lm and "pos_embed" not in lm and "attn_mask" not in lm
    # shape bookkeeping nodes are kept, as "other"
    assert lm["patch_embed.getattr"].layout == "other" and lm["patch_embed.getattr"].shape == ()


def test_torchvision_mobilenet_v3_small():
    lm = trace_model(torchvision.models.mobilenet_v3_small(), (3, 64, 64), "torchvision:mobilenet_v3_small")
    assert lm.method == "fx"
    expected = {"features.0": (16, 2), "features.1": (16, 4), "features.3": (24, 8), "features.8": (48, 16),
                "features.12": (576, 32)}
    for name, (channels, stride) in expected.items():
        assert (lm[name].channels, lm[name].stride, lm[name].layout) == (channels, stride, "map"), name
    assert lm["features.1"].kind == "InvertedResidual"
    assert lm["features.1.block.1"].kind == "SqueezeExcitation"  # a torchvision.ops leaf
    assert lm["flatten"].shape == (576,) and lm["classifier"].shape == (1000,)


def test_tf_efficientnet_lite0_needs_timm_leaves():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # Plain symbolic_trace cannot trace timm's same-padding convs (padding computed from the input size).
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = trace_model(model, (3, 64, 64), "timm:tf_efficientnet_lite0")
    assert lm.method == "fx"
    assert lm["conv_stem"].kind == "Conv2dSame" and lm["conv_stem"].stride == 2
    assert lm["blocks.6"].stride == 32 and lm["blocks.6"].channels == 320
    assert lm["bn2"].shape == (1280, 2, 2)


def test_tracer_kwargs_include_timm_and_torchvision_leaves():
    kwargs = tracer_kwargs()
    assert torchvision.ops.SqueezeExcitation in kwargs["leaf_modules"]
    assert timm.layers.Conv2dSame in kwargs["leaf_modules"]
    assert kwargs["autowrap_functions"] and all(callable(f) for f in kwargs["autowrap_functions"])


class _Shared(nn.Module):
    """One module called twice, and an op with a weight as an argument."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        y = self.act(self.lin(x))
        return self.act(y * self.scale)


def test_node_index_inputs_skip_weights():
    model = _Shared()
    graph, qualnames = trace_graph(model)
    index = NodeIndex(graph, qualnames)
    names = [name for name, _, _ in index.entries()]
    assert names == ["lin", "act", "mul", "act_1"]
    assert qualnames[index.input("mul")] == "act"  # not the "scale" parameter
    assert index.input("lin").op == "placeholder"
    assert index.resolve("act_1:input") is index.output("mul")
    assert index.resolve("nope") is None
    lm = trace_model(model, (4,))
    assert lm["act_1"].kind == "ReLU" and lm["act_1:input"].shape == (4,)


def test_trace_graph_restores_modes():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    model[1].eval()
    trace_graph(model, training=False)
    trace_graph(model, training=True)
    assert model.training and model[0].training and not model[1].training
