import json
import shutil

import pytest
import torch

from kdgraph.errors import SpecError
from kdgraph.spec import spec_from_dict
from kdgraph.train import train

DOC = {
    "name": "curriculum",
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [8, 16, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 96,
             "test_subset": 32},
    "distill": {"logits": {"temperature": 4.0},
                "pairs": [{"name": "c1", "teacher": "layer1", "student": "block1"},
                          {"name": "c2", "teacher": "layer2", "student": "block2"},
                          {"name": "c3", "teacher": "layer3", "student": "block3", "projector": "prune"}]},
    "train": {"epochs": 5, "optimizer": {"name": "adam", "lr": 1e-3},
              "stages": [{"name": "conv1", "epochs": 1, "pairs": ["c1"]},
                         {"name": "conv2", "epochs": 1, "pairs": ["c2"], "reset_optimizer": True},
                         {"name": "conv3", "epochs": 1, "pairs": ["pair:c3"]},
                         {"name": "logits", "epochs": 2, "logits": True, "reset_optimizer": True}]},
}


def test_active_terms_per_epoch_and_optimizer_resets(tmp_path, monkeypatch):
    from kdgraph.train import Trainer

    resets = []
    original = Trainer.reset_optimizer

    def spy(self, stage):
        resets.append(stage)
        original(self, stage)

    monkeypatch.setattr(Trainer, "reset_optimizer", spy)
    result = train(spec_from_dict(dict(DOC, output=str(tmp_path / "run"))), quiet=True)
    terms = [sorted(k for k in row if k.startswith("loss/") and k not in ("loss/total", "loss/ce"))
             for row in result.metrics]
    assert terms == [["loss/pair:c1"], ["loss/pair:c2"], ["loss/pair:c3"], ["loss/logits"], ["loss/logits"]]
    assert [row["stage"] for row in result.metrics] == ["conv1", "conv2", "conv3", "logits", "logits"]
    assert resets == [1, 3]  # fresh optimizers at the start of conv2 and logits only
    # lr restarts at the reset stages (adam, cosine over each stage)
    lrs = [row["lr"] for row in result.metrics]
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] == pytest.approx(1e-3) and lrs[2] < 1e-3


def test_resume_inside_a_reset_stage_is_exact(tmp_path):
    full = train(spec_from_dict(dict(DOC, output=str(tmp_path / "a" / "run"))), quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    run = tmp_path / "b" / "run"
    for path in run.joinpath("checkpoints").glob("*"):
        if not path.name.startswith("ckpt-e0003"):
            path.unlink()
    rows = run.joinpath("metrics.jsonl").read_text().splitlines()[:3]
    run.joinpath("metrics.jsonl").write_text("\n".join(rows) + "\n")
    resumed = train(spec_from_dict(dict(DOC, output=str(run))), quiet=True, resume=True)
    for (key, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), key


def test_stage_errors():
    bad = json.loads(json.dumps(DOC))
    bad["train"]["epochs"] = 4
    with pytest.raises(SpecError, match="set train.epochs: 5"):
        spec_from_dict(bad)
    bad = json.loads(json.dumps(DOC))
    bad["train"]["stages"][0]["pairs"] = ["c11"]
    with pytest.raises(SpecError, match="did you mean 'c1'"):
        spec_from_dict(bad)
