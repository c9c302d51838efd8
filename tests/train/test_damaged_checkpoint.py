"""A damaged checkpoint is found before any expensive work, named (the file that is damaged, not its JSON), and the
message says how to go on from the newest intact checkpoint, with the exact commands; ``kdgraph export`` too."""

import shlex
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from kdgraph.cli.main import main
from kdgraph.spec import spec_from_dict
from kdgraph.train import Trainer, loop, train
from kdgraph.rundir.checkpoint import DamagedCheckpoint, check_newest, damage


TINY = {  # conftest's tiny spec, smaller still
    "name": "tiny",
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
             "test_subset": 32},
    "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"}]},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "runtime": {"seed": 0},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 2-epoch run keeping both checkpoints (ckpt-e0001, ckpt-e0002)."""
    folder = tmp_path_factory.mktemp("damaged")
    doc = {**TINY, "output": {"dir": str(folder / "run"), "keep": 5}}
    train(spec_from_dict(doc), quiet=True)
    return folder / "run", doc


def copy_run(finished_run, tmp_path):
    run, doc = finished_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", {**doc, "output": {"dir": str(tmp_path / "run"), "keep": 5}}


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_damage_names_the_file_that_is_damaged(finished_run, tmp_path):
    run, _ = copy_run(finished_run, tmp_path)
    newest = run / "checkpoints" / "ckpt-e0002-s000000.json"
    assert damage(newest) is None
    truncate(newest.with_suffix(".safetensors"), keep=0.999)
    bad, why = damage(newest)
    assert bad == newest.with_suffix(".safetensors") and why.startswith("it is truncated (")
    newest.with_suffix(".safetensors").unlink()
    assert damage(newest) == (newest.with_suffix(".safetensors"), "it is missing")
    newest.write_text('{"epoch": 2, ')
    bad, why = damage(newest)
    assert bad == newest and "unreadable" in why


def test_resuming_onto_a_truncated_checkpoint_fails_before_the_teacher_passes(finished_run, tmp_path, monkeypatch):
    run, doc = copy_run(finished_run, tmp_path)
    calls = []
    monkeypatch.setattr(loop, "teachers_top1", lambda *a, **k: calls.append("teacher top-1") or {})
    monkeypatch.setattr(Trainer, "cache_teachers", lambda self: calls.append("teacher cache"))
    tensors = run / "checkpoints" / "ckpt-e0002-s000000.safetensors"
    truncate(tensors)
    doc = {**doc, "train": {**doc["train"], "epochs": 3}}
    with pytest.raises(DamagedCheckpoint) as err:
        train(spec_from_dict(doc), resume=True, quiet=True)
    assert calls == []  # found before the teacher's top-1 and the teacher cache
    message = str(err.value)
    json_file = tensors.with_suffix(".json")
    assert f"checkpoint file '{tensors}' is damaged: it is truncated (" in message, message
    assert "the newest intact checkpoint is ckpt-e0001-s000000 (epoch 1 done)" in message, message
    aside = f"mv {tensors} {tensors}.damaged && mv {json_file} {json_file}.damaged"
    assert f"To resume from it, set the damaged files aside: {aside}, then resume again" in message, message

    # the commands do what they say: the run resumes from epoch 1
    subprocess.run(aside, shell=True, check=True)
    monkeypatch.undo()
    result = train(spec_from_dict(doc), resume=True, quiet=True)
    assert [row["epoch"] for row in result.metrics] == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").glob("*.damaged")) == [json_file.name + ".damaged",
                                                                            tensors.name + ".damaged"]


def test_no_intact_checkpoint_left_says_start_over(finished_run, tmp_path):
    run, _ = copy_run(finished_run, tmp_path)
    for path in (run / "checkpoints").glob("*.safetensors"):
        truncate(path)
    with pytest.raises(DamagedCheckpoint, match="no older checkpoint is intact: start over with --overwrite"):
        check_newest(run / "checkpoints")


def test_the_cli_gives_the_exact_resume_command(finished_run, tmp_path):
    run, doc = copy_run(finished_run, tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({k: v for k, v in doc.items() if k != "output"}))
    tensors = run / "checkpoints" / "ckpt-e0002-s000000.safetensors"
    truncate(tensors)
    result = CliRunner().invoke(main, ["train", str(spec), "--set", f"output={run}", "--resume"],
                                prog_name="kdgraph")
    assert result.exit_code == 2, result.output
    json_file = tensors.with_suffix(".json")
    command = (f"mv {tensors} {tensors}.damaged && mv {json_file} {json_file}.damaged && "
               f"kdgraph train {spec} --set {shlex.quote(f'output={run}')} --resume")
    assert result.output.strip().endswith(command), result.output
    assert "Traceback" not in result.output


def test_export_names_the_damaged_checkpoint_and_the_command(finished_run, tmp_path):
    run, _ = copy_run(finished_run, tmp_path)
    (run / "student.safetensors").unlink()  # a run that did not finish: export reads its newest checkpoint
    tensors = run / "checkpoints" / "ckpt-e0002-s000000.safetensors"
    truncate(tensors)
    out = tmp_path / "student.safetensors"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out)], prog_name="kdgraph")
    assert result.exit_code == 2, result.output
    json_file = tensors.with_suffix(".json")
    assert f"checkpoint file '{tensors}' is damaged" in result.output
    assert "the newest intact checkpoint is ckpt-e0001-s000000 (epoch 1 done). To export from it" in result.output
    assert result.output.strip().endswith(f"mv {tensors} {tensors}.damaged && mv {json_file} {json_file}.damaged && "
                                          f"kdgraph export {run} --out {out}"), result.output
    assert not out.exists()
