"""Taps before an activation (``NAME:input`` of a ReLU, a BatchNorm's output) return the pre-activation values, also
when the ReLU after them works in place (the zoo models' ``ReLU(inplace=True)``), on the fx path, the hooks path and
through the frozen teacher with its BatchNorm folded."""

import pytest
import torch
from torch import nn

from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.models import create_model
from kdgraph.trace import FeatureExtractor, trace_model
from kdgraph.trace.hooks import hooks_layer_map


def _output_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``name``'s output read by a forward hook that copies it at once (before any in-place op)."""
    seen = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:  # returns None: the output is kept
        seen["v"] = output.clone()

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return seen["v"]


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return create_model("kdgraph:fmnist_cnn").eval()


@pytest.mark.parametrize("tap", ["block3.1", "block3.2:input", "block1.1"])
def test_student_batchnorm_output_is_taken_before_the_in_place_relu(cnn, tap):
    assert cnn.block3[2].inplace  # the case that matters: the ReLU overwrites its input
    layer_map = trace_model(cnn, (1, 28, 28), "cnn")
    x = torch.randn(4, 1, 28, 28)
    got = FeatureExtractor(cnn, [tap], layer_map)(x)[tap]
    bn = tap.split(":")[0].replace(".2", ".1") if tap.endswith(":input") else tap
    expected = _output_of(cnn, bn, x)
    assert torch.equal(got, expected)
    assert (got < 0).any()  # really before the ReLU


def test_hooks_path_copies_what_an_in_place_op_would_overwrite(cnn):
    layer_map = hooks_layer_map(cnn, (1, 28, 28), "cnn")
    x = torch.randn(4, 1, 28, 28)
    got = FeatureExtractor(cnn, ["block3.2:input", "block3.1"], layer_map)(x)
    assert torch.equal(got["block3.1"], _output_of(cnn, "block3.1", x))
    assert torch.equal(got["block3.2:input"], got["block3.1"]) and (got["block3.1"] < 0).any()


def test_gradients_flow_through_a_protected_tap(cnn):
    cnn.train()
    layer_map = trace_model(cnn, (1, 28, 28), "cnn")
    out = FeatureExtractor(cnn, ["block3.1"], layer_map)(torch.randn(4, 1, 28, 28))
    (out["block3.1"].pow(2).mean() + out["output"].sum()).backward()
    assert cnn.block3[0].weight.grad is not None and cnn.block3[0].weight.grad.abs().sum() > 0


def test_teacher_residual_sum_before_its_relu_survives_folding():
    torch.manual_seed(0)
    resnet = create_model("kdgraph:fmnist_resnet").eval()
    for m in resnet.modules():  # trained-looking statistics, so folding changes the arithmetic
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    layer_map = trace_model(resnet, (1, 28, 28), "resnet")
    taps = ["layer3.1.relu_1:input", "layer2.1.bn2"]
    x = torch.randn(4, 1, 28, 28)
    frozen = FrozenTeacher(FeatureExtractor(resnet, taps, layer_map, keep_output=True))
    assert frozen.folded > 0
    got = frozen(x)
    with torch.no_grad():
        expected_add = _output_of(resnet, "layer3.1", x)  # the block's output is relu(add): compare before it
        block = resnet.layer3[1]
        h = _output_of(resnet, "layer3.0", x)
        pre = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + block.shortcut(h)
    torch.testing.assert_close(got["layer3.1.relu_1:input"], pre, atol=1e-5, rtol=1e-5)
    assert (got["layer3.1.relu_1:input"] < 0).any() and torch.equal(pre.relu(), expected_add)
    torch.testing.assert_close(got["layer2.1.bn2"], _output_of(resnet, "layer2.1.bn2", x), atol=1e-5, rtol=1e-5)
