"""Shared trainer-test fixtures: the tiny distillation spec and a student that can be poisoned with NaN."""

import json

import pytest
import torch
from torch import nn

from kdgraph.models import create_model

TINY = {
    "name": "tiny",
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 192,
             "test_subset": 64},
    "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"}]},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "runtime": {"seed": 0},
}


@pytest.fixture
def tiny_doc():
    """A fresh copy of the tiny spec document (zoo ResNet → CNN, 192 embedded images, 2 epochs)."""
    return json.loads(json.dumps(TINY))


class PoisonAfter(nn.Module):
    """A zoo CNN whose logits are multiplied by a buffer (a graph input under fx) that a test sets to NaN."""

    def __init__(self):
        super().__init__()
        self.net = create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 8]})
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return self.net(x) * self.scale


@pytest.fixture
def poisonable_student():
    return PoisonAfter()
