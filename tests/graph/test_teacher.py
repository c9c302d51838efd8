import pytest
import torch
from torch import nn

from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.models import create_model
from kdgraph.trace import FeatureExtractor, trace_model


def randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ref,shape,taps", [
    ("kdgraph:fmnist_resnet", (1, 28, 28), ["layer2", "layer3"]),
    ("timm:resnet18", (3, 64, 64), ["layer3", "layer2.0.conv1"]),
])
def test_folded_teacher_matches_unfolded(ref, shape, taps, dtype):
    torch.manual_seed(0)
    model = create_model(ref).to(dtype)
    randomise_bn(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_map = trace_model(model, shape, ref)
    frozen = FrozenTeacher(FeatureExtractor(model, taps, layer_map, keep_output=True))
    assert frozen.folded > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.module.modules()) or ref.startswith("timm")
    x = torch.randn(4, *shape, dtype=dtype)
    with torch.no_grad():
        expected = FeatureExtractor(model, taps, layer_map, keep_output=True)(x)
    got = frozen(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for key in expected:
        scale = expected[key].abs().max().item()
        torch.testing.assert_close(got[key], expected[key], rtol=tol, atol=tol * scale)
    # the user's teacher is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_tap_on_raw_conv_output_is_not_folded():
    model = create_model("kdgraph:fmnist_resnet").eval()
    randomise_bn(model)
    layer_map = trace_model(model, (1, 28, 28))
    tap = "layer1.0.conv1"
    frozen = FrozenTeacher(FeatureExtractor(model, [tap], layer_map, keep_output=False))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model.layer1[0].conv1(model.stem(x))
    torch.testing.assert_close(frozen(x)[tap], expected, rtol=1e-5, atol=1e-5)


def test_frozen_teacher_stays_in_eval_and_without_grad():
    model = create_model("kdgraph:fmnist_resnet")
    frozen = FrozenTeacher(FeatureExtractor(model, ["layer3"], trace_model(model, (1, 28, 28))))
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    out = frozen(torch.randn(2, 1, 28, 28, requires_grad=True))
    assert not out["layer3"].requires_grad


def test_fold_is_fuse_conv_bn_eval_exactly_and_shares_nothing_with_the_user():
    """The fold computes each convolution as torch's ``fuse_conv_bn_eval`` does, bit for bit; the folded teacher
    holds no tensor of the user's model, whose ``requires_grad`` flags stay as they were."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    model = create_model("timm:resnet18")
    randomise_bn(model)
    model.eval()
    model.layer4.requires_grad_(False)  # a mixed state the fold must not flatten
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    frozen = FrozenTeacher(FeatureExtractor(model, ["layer4"], trace_model(model, (3, 64, 64)), keep_output=True))
    convs = {name: m for name, m in frozen.module.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == frozen.folded == 20  # every conv of resnet18 is followed by its own BatchNorm
    for name, fused in convs.items():
        bn_name = name.replace("conv", "bn") if "conv" in name else name[:-1] + "1"  # downsample.0 -> downsample.1
        reference = fuse_conv_bn_eval(copy.deepcopy(model.get_submodule(name)), model.get_submodule(bn_name))
        assert torch.equal(fused.weight, reference.weight) and torch.equal(fused.bias, reference.bias), name
    ours = {t.data_ptr() for t in frozen.module.state_dict().values()}
    assert not ours & {t.data_ptr() for t in model.state_dict().values()}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
