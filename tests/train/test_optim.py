import math

import pytest
import torch

from kdgraph.spec.schema import OptimizerSpec, ScheduleSpec
from kdgraph.rundir.checkpoint import optimizer_from_flat, optimizer_to_flat
from kdgraph.train.optim import build_optimizer, lr_factor, schedule_warning


def test_warmup_then_cosine():
    cfg = ScheduleSpec(name="cosine", warmup_epochs=1)
    steps, epochs = 10, 3
    assert lr_factor(cfg, 0, steps, epochs, 0.1) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, steps, epochs, 0.1) == pytest.approx(1.0)
    # halfway through the 20 post-warmup steps: cos(pi/2) -> 0.5
    assert lr_factor(cfg, 20, steps, epochs, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 30, steps, epochs, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_step_constant_and_min_lr():
    assert lr_factor(ScheduleSpec(name="step", step_epochs=2, gamma=0.5), 45, 10, 10, 0.1) == pytest.approx(0.25)
    assert lr_factor(ScheduleSpec(name="constant"), 99, 10, 10, 0.1) == 1.0
    end = lr_factor(ScheduleSpec(name="cosine", min_lr=0.01), 100, 10, 10, 0.1)
    assert end == pytest.approx(0.1)


def test_a_warmup_as_long_as_the_run_is_warned_about():
    message = schedule_warning(ScheduleSpec(warmup_epochs=3), 2)
    assert message.startswith("train.schedule.warmup_epochs 3 is not shorter than train.epochs 2")
    assert all(lr_factor(ScheduleSpec(warmup_epochs=3), step, 10, 2, 0.1) < 1.0 for step in range(20))  # never peaks
    assert schedule_warning(ScheduleSpec(warmup_epochs=2), 2) is not None
    assert schedule_warning(ScheduleSpec(warmup_epochs=1.5), 2) is None
    assert schedule_warning(ScheduleSpec(), 2) is None


def test_no_weight_decay_on_1d_params():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(OptimizerSpec(name="sgd", weight_decay=0.1), model.parameters())
    decays = {len(g["params"]): g["weight_decay"] for g in opt.param_groups}
    assert decays == {1: 0.1, 3: 0.0}
    assert isinstance(build_optimizer(OptimizerSpec(name="adamw"), model.parameters()), torch.optim.AdamW)


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(OptimizerSpec(name="adam", lr=0.1), model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    other = build_optimizer(OptimizerSpec(name="adam", lr=0.1), model.parameters())
    other.load_state_dict(optimizer_from_flat(tensors, meta))
    for a, b in zip(opt.state.values(), other.state.values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_decay_norm_and_bias_decays_every_parameter_as_plain_torch_does():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(OptimizerSpec(name="sgd", weight_decay=0.1, decay_norm_and_bias=True), model.parameters())
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(4, 0.1)]
