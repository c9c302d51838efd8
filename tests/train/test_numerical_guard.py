import pytest
import torch

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.train import Trainer
from kdgraph.train.guard import NumericalError


def spec(tmp_path, **train_cfg):
    return spec_from_dict({
        "student": {"model": "live:student"},
        "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 128,
                 "test_subset": 32},
        "train": {"epochs": 3, **train_cfg},
        "output": str(tmp_path / "run"),
    }, source="spec")


def test_non_finite_loss_stops_after_k_steps_and_keeps_last_checkpoint(tmp_path, monkeypatch,
                                                                       poisonable_student):
    student = poisonable_student
    original = Trainer.checkpoint

    def checkpoint_then_poison(self, epoch, step_in_epoch=0, val_top1=None):
        original(self, epoch, step_in_epoch, val_top1)
        student.scale.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint_then_poison)
    with pytest.raises(NumericalError) as err:
        train(spec(tmp_path, max_bad_steps=2), student=student, quiet=True)
    text = str(err.value)
    assert "2 consecutive steps" in text and "ce" in text and "ckpt-e0001-s000000" in text
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.json"))
    assert ckpts == ["ckpt-e0001-s000000.json"]
    # the skipped steps did not touch the weights: they equal the checkpoint's
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoints" / "ckpt-e0001-s000000.safetensors"))
    for key, value in student.state_dict().items():
        if key != "scale":
            assert torch.equal(saved[f"student.{key}"], value), key
    assert all(torch.isfinite(p).all() for p in student.parameters())
