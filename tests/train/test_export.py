"""Export: a trained run's student rebuilt from spec.yaml, loaded strictly, written as a plain state dict."""

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from kdgraph.errors import KdgraphError, RunDirError, WeightsError
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.rundir import export as export_mod
from kdgraph.files import save_tensors
from kdgraph.rundir.export import export_student, student_weights


def tiny_run(tmp_path, ref, name):
    doc = {
        "name": name,
        "student": {"model": ref, "kwargs": {"num_classes": 4}},
        "data": {"dataset": "synthetic", "image_size": 32, "batch_size": 32,
                 "synthetic": {"channels": 3, "classes": 4, "train_size": 64}},
        "train": {"epochs": 1, "max_steps_per_epoch": 1},
        "output": str(tmp_path / name),
    }
    return train(spec_from_dict(doc), quiet=True)


def outputs_match(a, b, shape=(2, 3, 32, 32)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("export"), "timm:resnet18", "timm-r18")


def test_timm_export_loads_into_plain_timm_model(timm_run, tmp_path):
    import timm

    out = export_student(timm_run.run_dir, tmp_path / "student.safetensors")
    fresh = timm.create_model("resnet18", num_classes=4)
    fresh.load_state_dict(load_file(str(out)), strict=True)
    assert outputs_match(fresh, timm_run.student)
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["kdgraph.model"] == "timm:resnet18" and json.loads(meta["kdgraph.kwargs"]) == {"num_classes": 4}


def test_export_falls_back_to_the_newest_checkpoint(timm_run, tmp_path):
    run = tmp_path / "copy"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text((timm_run.run_dir / "spec.yaml").read_text())
    for f in (timm_run.run_dir / "checkpoints").iterdir():
        (run / "checkpoints" / f.name).write_bytes(f.read_bytes())
    state, source = student_weights(run)
    assert source.parent.name == "checkpoints" and source.suffix == ".safetensors"
    out = export_student(run, tmp_path / "from_ckpt.safetensors")
    final = load_file(str(timm_run.run_dir / "student.safetensors"))
    exported = load_file(str(out))
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)


def test_torchvision_export_roundtrip(tmp_path):
    import torchvision

    result = tiny_run(tmp_path, "torchvision:mobilenet_v3_small", "tv-mnv3")
    out = export_student(result.run_dir, tmp_path / "tv.safetensors")
    fresh = torchvision.models.mobilenet_v3_small(num_classes=4)
    fresh.load_state_dict(load_file(str(out)), strict=True)
    assert outputs_match(fresh, result.student)


def fake_run(tmp_path, kwargs=None):
    """A run directory without training: the zoo CNN's spec and random weights."""
    run = tmp_path / "fake"
    run.mkdir()
    spec = {"name": "fake", "student": {"model": "kdgraph:fmnist_cnn", "kwargs": kwargs or {}},
            "data": {"dataset": "fashion-mnist", "source": "embedded"}}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    model = create_model("kdgraph:fmnist_cnn")
    save_tensors(run / "student.safetensors", model.state_dict())
    return run, model


def test_errors_name_the_problem(tmp_path, timm_run):
    with pytest.raises(RunDirError, match="not a kdgraph run directory"):
        export_student(tmp_path, tmp_path / "x.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "spec.yaml").write_text((timm_run.run_dir / "spec.yaml").read_text())
    with pytest.raises(WeightsError, match="neither student.safetensors nor a checkpoint"):
        export_student(empty, tmp_path / "x.safetensors")
    run, _ = fake_run(tmp_path)
    doc = yaml.safe_load((run / "spec.yaml").read_text())
    doc["student"]["kwargs"] = {"widths": [8, 8, 8]}
    (run / "spec.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(WeightsError, match="other shapes.*spec.yaml edited"):
        export_student(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_onnx_missing_is_a_clear_error(tmp_path, monkeypatch):
    run, _ = fake_run(tmp_path)
    monkeypatch.setattr(export_mod, "_installed", lambda module: False)
    with pytest.raises(KdgraphError, match="pip install onnx"):
        export_student(run, tmp_path / "s.safetensors", onnx=tmp_path / "s.onnx")
    assert not (tmp_path / "s.safetensors").exists()  # refused before anything was written


def test_a_run_of_a_live_student_names_what_to_do(tmp_path):
    import kdgraph

    spec = {"data": {"dataset": "synthetic", "image_size": 16, "batch_size": 16,
                     "synthetic": {"channels": 1, "classes": 4, "train_size": 32}},
            "train": {"epochs": 1}, "output": str(tmp_path / "run")}
    kdgraph.distill(spec, student=create_model("kdgraph:fmnist_cnn", {"widths": [4, 4, 4], "num_classes": 4}),
                    write=True)
    with pytest.raises(RunDirError, match=r"live:student.*passed from Python.*student\.safetensors.*strict=True"):
        export_student(tmp_path / "run", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_onnx_export_matches_the_student(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    run, model = fake_run(tmp_path)
    export_student(run, tmp_path / "s.safetensors", onnx=tmp_path / "s.onnx")  # input shape from the spec's data
    graph = onnx.load(str(tmp_path / "s.onnx"))
    onnx.checker.check_model(graph)
    x = torch.randn(3, 1, 28, 28)  # batch 3: the batch dim is dynamic
    got = ReferenceEvaluator(graph).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model.eval()(x), atol=1e-4)


def test_export_of_a_missing_path_says_it_does_not_exist(tmp_path):
    # #29: it said "is not a kdgraph run directory (no spec.yaml)" for a path that is not there at all
    with pytest.raises(RunDirError, match=f"'{tmp_path / 'nope'}' does not exist; give the run directory"):
        export_student(tmp_path / "nope", tmp_path / "x.safetensors")


def test_export_of_an_interrupted_run_says_it_used_a_mid_epoch_checkpoint(timm_run, tmp_path):
    from click.testing import CliRunner

    from kdgraph.cli.main import main

    run = tmp_path / "stopped"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text((timm_run.run_dir / "spec.yaml").read_text())
    source = next((timm_run.run_dir / "checkpoints").glob("*.json"))
    meta = json.loads(source.read_text())  # as a SIGINT in the first epoch leaves it: epoch 0, step 1
    meta.update(epoch=0, step_in_epoch=1, tensors="ckpt-e0000-s000001.safetensors")
    (run / "checkpoints" / "ckpt-e0000-s000001.json").write_text(json.dumps(meta))
    (run / "checkpoints" / "ckpt-e0000-s000001.safetensors").write_bytes(
        source.with_suffix(".safetensors").read_bytes())
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "s.safetensors")])
    assert result.exit_code == 0, result.output
    assert ("note: the run has no student.safetensors (its training did not finish): the student comes from its "
            "newest checkpoint, ckpt-e0000-s000001 (mid-epoch: epoch 1, step 1)") in result.output, result.output
    finished = CliRunner().invoke(main, ["export", str(timm_run.run_dir), "--out", str(tmp_path / "f.safetensors")])
    assert finished.exit_code == 0 and "note:" not in finished.output, finished.output
