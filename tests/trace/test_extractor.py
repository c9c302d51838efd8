"""FeatureExtractor on the fx path: graph outputs, no hooks, trimmed head, shared parameters."""

import pytest
import timm
import torch
from torch import nn

from kdgraph.trace import FeatureExtractor, UnknownLayerError, trace_model


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.fc(self.drop(x.mean((2, 3))))


def capture(model, x, names):
    """Reference features: forward hooks (outputs) and pre-hooks (':input')."""
    got, handles = {}, []
    for name in names:
        base, _, suffix = name.partition(":")
        module = model.get_submodule(base)
        if suffix == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: got.setdefault(n, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: got.setdefault(n, o)))
    out = model(x)
    for h in handles:
        h.remove()
    return got, out


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    return model, trace_model(model, (3, 16, 16), "tiny")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    return model, trace_model(model, (3, 64, 64), "timm:resnet18")


def test_resnet_taps_equal_forward_hooks(resnet):
    model, lm = resnet
    taps = ["layer1", "layer2.0", "layer3:input", "layer3", "layer4.1.act2", "fc:input"]
    ext = FeatureExtractor(model, taps, lm)
    assert ext.method == "fx"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ext(x)
        ref, logits = capture(model, x, taps)
    assert list(out) == taps + ["output"]
    for t in taps:
        assert out[t].shape[1:] == lm[t].shape, t
        assert torch.allclose(out[t], ref[t], atol=1e-6), t
    assert torch.allclose(out["output"], logits, atol=1e-6)
    assert out["layer3"].shape == (2, 256, 4, 4)


def test_function_nodes_and_duplicate_nodes(resnet):
    model, lm = resnet
    # "layer1:input" is the value of "maxpool"; "layer3.1.add" is a function node; "layer3:output" == "layer3"
    taps = ["maxpool", "layer1:input", "layer3.1.add", "layer3:output", "layer3"]
    ext = FeatureExtractor(model, taps, lm, keep_output=False)
    with torch.no_grad():
        out = ext(torch.randn(2, 3, 64, 64))
    assert list(out) == taps
    assert torch.equal(out["maxpool"], out["layer1:input"])
    assert torch.equal(out["layer3:output"], out["layer3"])
    assert out["layer3.1.add"].shape == (2, 256, 4, 4)


def test_keep_output_false_trims_head(resnet):
    model, lm = resnet
    ext = FeatureExtractor(model, ["layer3"], lm, keep_output=False)
    gm = ext.graph_module
    for graph in (gm.train_graph, gm.eval_graph):
        targets = {str(n.target) for n in graph.nodes if n.op == "call_module"}
        assert "layer3.1.act2" in targets
        assert not any(t.startswith(("layer4", "fc", "global_pool")) for t in targets)
    assert not hasattr(gm, "fc") and not hasattr(gm, "layer4")
    calls = []
    handle = model.fc.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = ext(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert list(out) == ["layer3"] and calls == []
    # with the head kept, fc is in the graph
    assert hasattr(FeatureExtractor(model, ["layer3"], lm).graph_module, "fc")


def test_no_hooks_on_fx_path(tiny):
    model, lm = tiny
    ext = FeatureExtractor(model, ["stem", "block:input"], lm)
    ext(torch.randn(2, 3, 16, 16))
    for m in list(model.modules()) + list(ext.modules()):
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert isinstance(ext.graph_module, torch.fx.GraphModule)


def test_parameters_are_shared_and_train(tiny):
    model, lm = tiny
    model.train()
    ext = FeatureExtractor(model, ["stem", "block"], lm)
    assert ext.training
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in ext.parameters()} == model_params
    assert model.stem[0].weight is ext.graph_module.get_submodule("stem.0").weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 16, 16)
    w0 = model.stem[0].weight.detach().clone()
    rm0 = model.stem[1].running_mean.clone()
    out = ext(x)
    (out["block"].pow(2).mean() + out["output"].pow(2).mean()).backward()
    opt.step()
    assert not torch.equal(w0, model.stem[0].weight)
    assert model.fc.weight.grad is not None
    assert not torch.equal(rm0, model.stem[1].running_mean)  # the model's own BN buffers, train mode
    # eval-mode extractor equals the updated model
    ext.eval()
    assert not model.stem[1].training
    with torch.no_grad():
        ref, logits = capture(model, x, ["block"])
        out = ext(x)
    assert torch.allclose(out["block"], ref["block"], atol=1e-6)
    assert torch.allclose(out["output"], logits, atol=1e-6)


def test_train_and_eval_graphs(tiny):
    model, lm = tiny
    ext = FeatureExtractor(model, ["block"], lm)
    x = torch.randn(2, 3, 16, 16)
    ext.train()
    torch.manual_seed(1)
    a = ext(x)["output"]
    torch.manual_seed(1)
    model.train()
    b = model(x)
    assert torch.allclose(a, b, atol=1e-6)  # dropout active, same RNG draw
    ext.eval()
    with torch.no_grad():
        assert torch.allclose(ext(x)["output"], model.eval()(x), atol=1e-6)


def test_construction_keeps_modes(tiny):
    model, lm = tiny
    model.train()
    model.stem[1].eval()  # frozen BN inside a training model
    FeatureExtractor(model, ["block"], lm)
    assert model.training and model.block[1].training and not model.stem[1].training


def test_unknown_and_reserved_taps(tiny):
    model, lm = tiny
    with pytest.raises(UnknownLayerError, match="nearest: block"):
        FeatureExtractor(model, ["blokc"], lm)
    with pytest.raises(ValueError, match="reserved"):
        FeatureExtractor(model, ["output"], lm)


def test_vit_extractor_tokens():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    lm = trace_model(model, (3, 224, 224), "vit")
    ext = FeatureExtractor(model, ["blocks.5", "blocks.11.mlp:input"], lm, keep_output=False)
    assert not hasattr(ext.graph_module, "head")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ext(x)
        ref, _ = capture(model, x, ["blocks.5", "blocks.11.mlp:input"])
    assert out["blocks.5"].shape == (1, 197, 192)
    assert torch.allclose(out["blocks.5"], ref["blocks.5"], atol=1e-5)
    assert torch.allclose(out["blocks.11.mlp:input"], ref["blocks.11.mlp:input"], atol=1e-5)


class NeedsWidth16(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        torch._assert(x.shape[-1] == 16, "input width must be 16")
        return self.conv(x)


def test_failed_probe_is_one_line_without_fx_interpreter_noise():
    with pytest.raises(ValueError) as err:
        trace_model(NeedsWidth16(), (3, 8, 8), "needs16")
    text = str(err.value)
    assert "needs16" in text and "input width must be 16" in text
    assert "\n" not in text and "While executing" not in text
