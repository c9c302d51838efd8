"""InDistill channel pruning: masks, channel selection, producing conv."""

import pytest
import torch
from torch import nn

from kdgraph.align.prune import ChannelSelect, find_producing_conv, l1_channel_mask


def hand_weights() -> torch.Tensor:
    # 5 filters of shape (2, 1, 1); L1 norms 3, 1, 4, 4, 2 ; L2 norms sqrt(5), 1, sqrt(8), 4, sqrt(2)
    w = torch.zeros(5, 2, 1, 1)
    w[0, :, 0, 0] = torch.tensor([1.0, -2.0])
    w[1, :, 0, 0] = torch.tensor([0.0, 1.0])
    w[2, :, 0, 0] = torch.tensor([-2.0, 2.0])
    w[3, :, 0, 0] = torch.tensor([4.0, 0.0])
    w[4, :, 0, 0] = torch.tensor([1.0, 1.0])
    return w


def test_l1_mask_known_norms_and_ties():
    w = hand_weights()
    idx = l1_channel_mask(w, 2)
    assert idx.dtype == torch.long
    assert idx.tolist() == [2, 3]  # tie 4 == 4
    assert l1_channel_mask(w, 3).tolist() == [0, 2, 3]
    assert l1_channel_mask(w, 5).tolist() == [0, 1, 2, 3, 4]
    # tie broken by lower index: filters 2 and 3 both have L1 norm 4
    assert l1_channel_mask(w, 1).tolist() == [2]


def test_l2_mask():
    w = hand_weights()
    assert l1_channel_mask(w, 1, criterion="l2").tolist() == [3]
    assert l1_channel_mask(w, 2, criterion="l2").tolist() == [2, 3]
    assert l1_channel_mask(w, 3, criterion="l2").tolist() == [0, 2, 3]


def test_mask_does_not_modify_weights():
    conv = nn.Conv2d(3, 8, 3)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    l1_channel_mask(conv.weight, 4)
    l1_channel_mask(conv.weight, 4, criterion="l2")
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k])
    assert conv.weight.grad is None


def test_mask_bad_args():
    w = hand_weights()
    for keep in [0, 6, 2.0, True]:
        with pytest.raises(ValueError, match="keep"):
            l1_channel_mask(w, keep)
    with pytest.raises(ValueError, match="criterion"):
        l1_channel_mask(w, 2, criterion="l3")


def test_channel_select_module():
    sel = ChannelSelect(torch.tensor([0, 2]))
    assert list(sel.parameters()) == []
    assert "indices" in dict(sel.named_buffers())
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(sel(x), x[:, [0, 2]])


def test_selecting_channels_equals_pruned_stack():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():  # non-trivial BN statistics and affine
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    teacher = nn.Sequential(conv, bn, nn.ReLU(), nn.MaxPool2d(2)).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    idx = l1_channel_mask(conv.weight, 3)
    x = torch.randn(2, 3, 8, 8)  # the unpruned input
    with torch.no_grad():
        selected = ChannelSelect(idx)(teacher(x))

        pconv = nn.Conv2d(3, 3, 3, padding=1)
        pconv.weight.copy_(conv.weight[idx])
        pconv.bias.copy_(conv.bias[idx])
        pbn = nn.BatchNorm2d(3)
        for name in ["weight", "bias", "running_mean", "running_var"]:
            getattr(pbn, name).copy_(getattr(bn, name)[idx])
        pruned = nn.Sequential(pconv, pbn, nn.ReLU(), nn.MaxPool2d(2)).eval()(x)

    torch.testing.assert_close(selected, pruned)
    assert selected.shape == (2, 3, 4, 4)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.downsample = nn.Sequential(nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = nn.Sequential(Block())
        self.head = nn.Linear(16, 10)
        self.shortcut_only = nn.Sequential()
        self.shortcut_only.shortcut = nn.Conv2d(4, 4, 1)


def test_find_producing_conv():
    net = Net()
    name, conv = find_producing_conv(net, "stem")
    assert name == "stem.0" and conv is net.stem[0]
    name, conv = find_producing_conv(net, "layer1")
    assert name == "layer1.0.conv2"  # the downsample branch is skipped
    assert find_producing_conv(net, "layer1.0.conv1:output")[0] == "layer1.0.conv1"
    assert find_producing_conv(net, "layer1.0.downsample")[0] == "layer1.0.downsample.0"
    assert find_producing_conv(net, "shortcut_only")[0] == "shortcut_only.shortcut"


def test_find_producing_conv_errors():
    net = Net()
    with pytest.raises(ValueError, match="holds no Conv2d"):
        find_producing_conv(net, "head")
    with pytest.raises(ValueError, match="no module 'layer9'"):
        find_producing_conv(net, "layer9")
    with pytest.raises(ValueError, match="input"):
        find_producing_conv(net, "layer1:input")


def test_find_producing_conv_torchvision_resnet():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18()
    assert find_producing_conv(m, "layer3")[0] == "layer3.1.conv2"
    assert find_producing_conv(m, "layer2.0")[0] == "layer2.0.conv2"  # not layer2.0.downsample.0
    assert find_producing_conv(m, "layer2.0")[1].out_channels == 128
