"""The device-side numerical guard (fused optimizers): exact skips without host reads, and the same run results
as the host-side guard. Fused SGD/Adam run on CPU too, so all of this is tested here."""

import contextlib
import copy
import json

import pytest
import torch
from torch import nn

from kdgraph.spec import spec_from_dict
from kdgraph.spec.schema import OptimizerSpec
from kdgraph.train import Trainer
from kdgraph.train import optim as optim_module
from kdgraph.train import train
from kdgraph.train.guard import BufferSnapshot, NumericalError, StepGuard, prime_momentum, total_norm
from kdgraph.train.optim import build_optimizer

DATA = {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 192, "test_subset": 64}


def poison_spec(tmp_path, **train_cfg):
    return spec_from_dict({"student": {"model": "live:student"}, "data": DATA, "train": {"epochs": 3, **train_cfg},
                           "output": str(tmp_path / "run")}, source="spec")


def distill_spec(tmp_path):
    """A teacher, logits and one feature pair (BatchNorms on both sides), one epoch of 6 steps."""
    return spec_from_dict({
        "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
        "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
        "data": DATA,
        "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                    "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"}]},
        "train": {"epochs": 1, "max_bad_steps": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
        "output": str(tmp_path / "run"),
    })


@contextlib.contextmanager
def no_host_reads():
    """Any tensor-to-Python conversion (a device sync on CUDA) raises inside this block."""
    names = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(self, *args, **kwargs):
        raise AssertionError("host read of a tensor inside the device-side step")

    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def test_buffer_snapshot_restores_all_dtypes_and_layouts():
    a = torch.randn(4)
    b = torch.tensor(3)  # 0-d int64, like num_batches_tracked
    c = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    d = torch.tensor([True, False])
    snap = BufferSnapshot([a, b, c, d])
    assert len(snap.groups) == 3
    before = [t.clone() for t in (a, b, c, d)]
    snap.save()
    a.fill_(float("nan")), b.add_(1), c.mul_(2), d.logical_not_()
    after = [t.clone() for t in (a, b, c, d)]
    snap.restore_where(torch.tensor(True))  # keep the current values
    for t, v in zip((a, b, c, d), after):
        assert torch.equal(t, v) or torch.isnan(v).all()
    snap.restore_where(torch.tensor(False))
    for t, v in zip((a, b, c, d), before):
        assert torch.equal(t, v)
    assert c.is_contiguous(memory_format=torch.channels_last)
    a.zero_()
    snap.restore()
    assert torch.equal(a, before[0])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _step(net, opt, guard, x, y):
    guard.before_forward()
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = total_norm([p.grad for p in net.parameters()])
    if not guard.check(loss, norm, {"ce": loss.detach()}, opt, len(x)):
        opt.step()
    return guard.mask({"total": loss.detach()})


def _state(net, opt):
    tensors = [t.clone() for t in net.state_dict().values()]
    for state in opt.state.values():
        tensors += [v.clone() for v in state.values()]
    return tensors


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_skip_changes_nothing_and_reads_nothing(name):
    net = _net()
    opt = build_optimizer(OptimizerSpec(name=name, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                          net.parameters(), fused=True)
    guard = StepGuard(list(net.buffers()), max_bad=3, warn=lambda m: None)
    assert StepGuard.device_side(opt)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(5, (8,), generator=g)
    _step(net, opt, guard, x, y)  # a good step first: momentum / Adam moments are non-zero
    reference = copy.deepcopy((net, opt))
    before = _state(net, opt)
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with no_host_reads():
        values = _step(net, opt, guard, bad_x, y)
    assert values["total"] == 0  # a skipped step's metrics are masked out
    for old, new in zip(before, _state(net, opt)):
        assert torch.equal(old, new)
    # the next good step equals a run that never saw the bad one
    ref_net, ref_opt = reference
    _step(net, opt, guard, x, y)
    _step(ref_net, ref_opt, StepGuard(list(ref_net.buffers()), 3, lambda m: None), x, y)
    for a, b in zip(_state(net, opt), _state(ref_net, ref_opt)):
        assert torch.equal(a, b)


def test_skipped_first_step_leaves_no_uninitialised_momentum():
    net, ref = _net(), _net()
    opt = build_optimizer(OptimizerSpec(name="sgd", lr=0.1, momentum=0.9), net.parameters(), fused=True)
    ref_opt = build_optimizer(OptimizerSpec(name="sgd", lr=0.1, momentum=0.9), ref.parameters(), fused=False)
    guard = StepGuard(list(net.buffers()), max_bad=3, warn=lambda m: None)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(5, (8,))
    _step(net, opt, guard, torch.full_like(x, float("nan")), y)
    assert all(torch.equal(s["momentum_buffer"], torch.zeros_like(p)) for p, s in opt.state.items())
    _step(net, opt, guard, x, y)
    _step(ref, ref_opt, StepGuard(list(ref.buffers()), 3, lambda m: None), x, y)
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    prime_momentum(opt)  # no-op once the buffers exist
    assert not torch.equal(next(iter(opt.state.values()))["momentum_buffer"], torch.zeros(1))


def test_flush_counts_warns_and_raises_after_consecutive_bad_steps():
    net = _net()
    opt = build_optimizer(OptimizerSpec(name="sgd", lr=0.1), net.parameters(), fused=True)
    warnings = []
    guard = StepGuard(list(net.buffers()), max_bad=3, warn=warnings.append, every=2,
                      last_checkpoint=lambda: "ckpt-e0001-s000000.json")
    x, y = torch.randn(8, 3, 8, 8), torch.randint(5, (8,))
    nan = torch.full_like(x, float("nan"))
    _step(net, opt, guard, nan, y)
    assert guard.poll() == 0 and warnings == []  # not read yet: 1 step since the last check
    _step(net, opt, guard, x, y)
    assert guard.poll() == 8 and "ce" in warnings[-1] and "1 step(s) skipped" in warnings[-1]
    assert guard.bad_steps == 0
    _step(net, opt, guard, nan, y)
    assert guard.poll() == 0
    _step(net, opt, guard, nan, y)
    assert guard.poll() == 16 and "2/3 consecutive" in warnings[-1]
    _step(net, opt, guard, nan, y)  # the third in a row: the next read raises
    with pytest.raises(NumericalError, match="3 consecutive steps.*ckpt-e0001-s000000.json"):
        guard.flush()


@pytest.fixture
def fused_on_cpu(monkeypatch):
    monkeypatch.setattr(optim_module, "FUSED_DEVICES", ("cuda", "cpu"))


def test_training_with_device_guard_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch, fused_on_cpu,
                                                                 poisonable_student):
    student = poisonable_student
    original = Trainer.checkpoint

    def checkpoint_then_poison(self, epoch, step_in_epoch=0, val_top1=None):
        original(self, epoch, step_in_epoch, val_top1)
        assert StepGuard.device_side(self.optimizer)
        student.scale.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint_then_poison)
    with pytest.raises(NumericalError, match="consecutive steps with non-finite loss term.s. ce.*ckpt-e0001-s000000"):
        train(poison_spec(tmp_path, max_bad_steps=2), student=student, quiet=True)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoints" / "ckpt-e0001-s000000.safetensors"))
    for key, value in student.state_dict().items():
        if key != "scale":
            assert torch.equal(saved[f"student.{key}"], value.cpu()), key


def _metrics_with_one_bad_step(tmp_path, monkeypatch, name):
    original = Trainer.step
    calls = []

    def poison_third(self, x, y, *rest):
        calls.append(1)
        if len(calls) == 3:
            x = torch.full_like(x, float("nan"))
        return original(self, x, y, *rest)

    monkeypatch.setattr(Trainer, "step", poison_third)
    spec = distill_spec(tmp_path / name)
    result = train(spec, quiet=True, write=False)
    monkeypatch.setattr(Trainer, "step", original)
    return result.metrics[0]


def test_device_guard_gives_the_host_guard_results(tmp_path, monkeypatch):
    host = _metrics_with_one_bad_step(tmp_path, monkeypatch, "host")
    monkeypatch.setattr(optim_module, "FUSED_DEVICES", ("cuda", "cpu"))
    device = _metrics_with_one_bad_step(tmp_path, monkeypatch, "device")
    for key in ("loss/total", "loss/ce", "loss/logits", "train_top1", "val_top1"):
        assert device[key] == pytest.approx(host[key], rel=1e-4, abs=1e-6), key
    assert json.dumps(sorted(device)) == json.dumps(sorted(host))


def test_fused_state_loaded_contiguous_gets_the_channels_last_layout():
    from kdgraph.rundir.checkpoint import match_param_layout

    init = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    results = []
    for fused in (True, False):
        p = nn.Parameter(init.contiguous(memory_format=torch.channels_last))
        opt = build_optimizer(OptimizerSpec(name="sgd", lr=0.1, momentum=0.9), [p], fused=fused)
        state = {"state": {0: {"momentum_buffer": torch.arange(108.0).view(4, 3, 3, 3)}},  # contiguous, as loaded
                 "param_groups": opt.state_dict()["param_groups"]}
        opt.load_state_dict(state)
        match_param_layout(opt)
        assert opt.state[p]["momentum_buffer"].stride() == p.stride()
        p.grad = torch.ones_like(p)
        opt.step()
        results.append(p.detach().clone())
    assert torch.allclose(*results, atol=1e-6)


def test_resume_with_fused_optimizer_matches_uninterrupted_run(tmp_path, fused_on_cpu):
    import shutil

    def spec(root):
        s = distill_spec(root)
        s.train.epochs = 2
        return s

    full = train(spec(tmp_path / "a"), quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "b" / "run" / "checkpoints").glob("ckpt-e0002-*"):
        path.unlink()
    metrics = tmp_path / "b" / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    (tmp_path / "b" / "run" / "student.safetensors").unlink()
    resumed = train(spec(tmp_path / "b"), quiet=True, resume=True)
    for (key, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_makes_no_host_sync(tmp_path):
    """On CUDA, kdgraph's step (fused optimizer, device-side guard) never waits for the GPU, good or bad steps."""
    from kdgraph.plan import resolve_plan

    doc = distill_spec(tmp_path).model_dump(mode="json")
    doc["runtime"].update(device="cuda", compile="off")
    spec = spec_from_dict(doc)
    resolved = resolve_plan(spec)
    loop = Trainer(resolved)
    loop.graph.train()
    assert StepGuard.device_side(loop.optimizer)
    x = torch.randn(32, 1, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(10, (32,), device="cuda")
    loop.step(x, y)  # lazy initialisation (optimizer state, cuBLAS handles) may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop.step(x, y)
        loop.step(torch.full_like(x, float("nan")), y)
        loop.step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loop.guard.flush() == 32
