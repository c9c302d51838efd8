"""The Trainer's set-up: what it moves onto the device, and what stays tied to the user's modules afterwards."""

import pytest
import torch
from torch import nn

from kdgraph.models import create_model
from kdgraph.plan import resolve_plan
from kdgraph.spec import spec_from_dict
from kdgraph.train import Trainer, train
from kdgraph.train.guard import NumericalError

DATA = {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 96, "test_subset": 32}


class RootGain(nn.Module):
    """A zoo CNN with a buffer on its root, 4-D so that channels_last gives its slot a new tensor (as a move to the
    GPU does for every buffer): fx keeps root-level buffers in the traced module's own slots."""

    def __init__(self):
        super().__init__()
        self.net = create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 8]})
        self.register_buffer("gain", torch.ones(1, 4, 14, 14))

    def forward(self, x):
        net = self.net
        x = net.block1(x) * self.gain
        return net.fc(torch.flatten(net.pool(net.block3(net.block2(x))), 1))


def spec(tmp_path, epochs=2):
    return spec_from_dict({"student": {"model": "live:student"}, "data": DATA,
                           "train": {"epochs": epochs, "max_bad_steps": 2}, "output": str(tmp_path / "run")})


def test_the_student_module_shares_the_moved_graphs_buffers(tmp_path):
    student = RootGain()
    loop = Trainer(resolve_plan(spec(tmp_path), student))
    assert loop.rt.channels_last
    graph_buffers = {b.data_ptr() for b in loop.graph.buffers()}
    assert all(b.data_ptr() in graph_buffers for b in student.buffers())
    assert student.gain.is_contiguous(memory_format=torch.channels_last)


def test_a_buffer_set_on_the_users_module_reaches_the_run(tmp_path, monkeypatch):
    """The GPU run's fault on the CPU: the user's module poisoned after the first checkpoint must stop the run."""
    student = RootGain()
    original = Trainer.checkpoint

    def checkpoint_then_poison(self, epoch, step_in_epoch=0, val_top1=None):
        original(self, epoch, step_in_epoch, val_top1)
        student.gain.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint_then_poison)
    with pytest.raises(NumericalError, match="consecutive steps with non-finite"):
        train(spec(tmp_path), student=student, quiet=True)
