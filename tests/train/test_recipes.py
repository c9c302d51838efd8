"""The shipped method recipes run end to end (a few steps each), with what each of them promises."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdgraph.models import create_model
from kdgraph.spec import load_spec
from kdgraph.train import train
from kdgraph.train.teacher_cache import TeacherCache
from kdgraph.plan import resolve_plan
from kdgraph.data import make_loader

SPECS = Path(__file__).resolve().parents[2] / "specs" / "methods"
SMALL = ["data.source=embedded", "data.train_subset=256", "data.test_subset=128", "data.batch_size=32",
         "train.epochs=2", "train.max_steps_per_epoch=3", "runtime.threads=1"]


@pytest.mark.parametrize("name", ["projector", "simreg_two_teachers", "function_matching"])
def test_method_spec_runs(tmp_path, name):
    spec = load_spec(SPECS / f"{name}.yaml", [*SMALL, f"output={tmp_path / 'run'}"])
    result = train(spec, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for metric in spec.eval.metrics:
        assert 0 <= rows[-1][f"val_{metric}"] <= 1
    plain = create_model(spec.student.model)
    plain.load_state_dict(load_file(str(tmp_path / "run" / "student.safetensors")), strict=True)  # heads apart
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(summary[f"student_{m}"] == rows[-1][f"val_{m}"] for m in spec.eval.metrics)
    assert result.student is not None


def test_simreg_without_labels_logs_no_train_top1_and_both_teachers(tmp_path):
    spec = load_spec(SPECS / "simreg_two_teachers.yaml", [*SMALL, f"output={tmp_path / 'run'}"])
    result = train(spec, quiet=True)
    row = result.metrics[-1]
    assert "train_top1" not in row and "val_top1" not in row and "loss/ce" not in row
    assert {"loss/pair:resnet", "loss/pair:cnn_wide", "val_knn", "val_linear_probe"} <= set(row)
    assert {"teacher_top1/resnet", "teacher_top1/cnn_wide"} <= set(result.summary)


def test_checkpoint_every_n_epochs(tmp_path):
    spec = load_spec(SPECS / "function_matching.yaml",
                     [*SMALL, "train.epochs=5", "output.checkpoint_epochs=2", "output.keep=10",
                      f"output.dir={tmp_path / 'run'}"])
    train(spec, quiet=True)
    names = sorted(p.stem for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.json"))
    assert names == ["ckpt-e0002-s000000", "ckpt-e0004-s000000", "ckpt-e0005-s000000"]


def test_teacher_cache_holds_unaugmented_outputs_and_replaces_the_forward(tmp_path):
    spec = load_spec(SPECS / "function_matching.yaml", [*SMALL, "teacher.cache=outputs", f"output={tmp_path / 'r'}"])
    plan = resolve_plan(spec)
    teacher = plan.graph.teachers["teacher"]
    cache = TeacherCache(spec, {"teacher": teacher}, plan.data.train, torch.device("cpu"))
    x, _ = next(iter(make_loader(plan.data.train, 256, train=False, seed=0, drop_last=False)))
    with torch.no_grad():
        torch.testing.assert_close(cache.outputs["teacher"]["output"], teacher(x)["output"])
    index = torch.tensor([5, 0, 17])
    torch.testing.assert_close(cache.lookup(index, torch.device("cpu"))["teacher"]["output"],
                               teacher(x[index])["output"], atol=1e-5, rtol=1e-5)
    calls = []
    result_plan = resolve_plan(spec)
    result_plan.graph.teachers["teacher"].register_forward_pre_hook(lambda m, a: calls.append(len(a[0])))
    from kdgraph.train import loop

    original = loop.resolve_plan
    loop.resolve_plan = lambda *a, **k: result_plan
    try:
        result = train(spec, quiet=True)
    finally:
        loop.resolve_plan = original
    # one pass over the 256 training images (eval batch 64) to build the cache, then no teacher forward in training;
    # the 128 test images are read twice: the teacher's top-1, and its logits for val_agree / val_kl (kept after that)
    assert sum(calls) == 256 + 2 * 128 and len(result.metrics) == 2


def test_headless_teacher_and_label_free_student_from_python():
    """A teacher without a classifier (a self-supervised backbone's shape: features out) and no labels at all."""
    import kdgraph
    from torch import nn

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    spec = {"student": {"model": "kdgraph:fmnist_cnn"},
            "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 128,
                     "test_subset": 64},
            "distill": {"pairs": [{"teacher_model": "ssl", "teacher": "3", "student": "fc:input",
                                   "projector": {"name": "mlp", "hidden": ["2d"]}, "loss": "cosine"}]},
            "train": {"epochs": 1, "ce_weight": 0}, "eval": ["knn"], "runtime": {"threads": 1}}
    result = kdgraph.distill(spec, teacher={"ssl": backbone})
    assert not any(k.startswith("teacher_top1") for k in result.summary)
    assert 0 <= result.summary["student_knn"] <= 1 and "loss/pair:fc:input->ssl.3" in result.metrics[-1]
