"""Resuming redoes nothing that finished, says when there is nothing to resume, and an interrupted or failed start
leaves no half-made run directory behind (while anything that existed before is kept)."""

import io
import json
import shutil

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from kdgraph.spec import spec_from_dict
from kdgraph.train import Trainer, loop, train
from kdgraph.session.signals import Interrupted
from kdgraph.session.progress import Reporter


def listening_reporter() -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(console=Console(file=out, width=400, highlight=False)), out


def baseline_spec(tiny_doc, run):
    tiny_doc["train"]["baseline"] = True
    tiny_doc["output"] = {"dir": str(run), "keep": 5}
    return spec_from_dict(tiny_doc)


def files(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*.*")
            if p.suffix in (".safetensors", ".json", ".jsonl")}


def test_resuming_a_finished_run_with_its_baseline_redoes_nothing(tmp_path, tiny_doc):
    run = tmp_path / "run"
    first = train(baseline_spec(tiny_doc, run), quiet=True)
    before = files(run)
    reporter, out = listening_reporter()
    again = train(baseline_spec(tiny_doc, run), resume=True, reporter=reporter)
    text = out.getvalue()
    assert "teacher.cache: computing" not in text, text  # the teacher cache is not rebuilt
    assert not [line for line in text.splitlines() if line.startswith("epoch ")], text  # nothing is trained again
    assert text.count("all 2 epochs are done; nothing to train") == 2, text  # the distilled run and its baseline
    assert again.summary == first.summary
    checkpoints = {k: v for k, v in files(run).items() if "checkpoints" in k}
    assert checkpoints == {k: v for k, v in before.items() if "checkpoints" in k}


def test_a_half_finished_baseline_resumes_from_its_own_checkpoint(tmp_path, tiny_doc):
    full = train(baseline_spec(tiny_doc, tmp_path / "a" / "run"), quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    run = tmp_path / "b" / "run"
    # stopped during the baseline's second epoch: its last checkpoint is after epoch 1
    base = run / "baseline"
    for path in [*(base / "checkpoints").glob("ckpt-e0002-*"), base / "student.safetensors", base / "summary.json"]:
        path.unlink()
    (base / "metrics.jsonl").write_text((base / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if not k.startswith("baseline_")}))

    reporter, out = listening_reporter()
    resumed = train(baseline_spec(tiny_doc, run), resume=True, reporter=reporter)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 2"], lines
    assert any("resumed from ckpt-e0001-s000000" in line for line in lines), lines
    assert resumed.summary == full.summary
    a, b = load_file(str(tmp_path / "a" / "run" / "baseline" / "student.safetensors")), load_file(
        str(base / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, tiny_doc):
    tiny_doc["train"]["epochs"] = 1
    tiny_doc["output"] = str(tmp_path / "never-ran")
    reporter, out = listening_reporter()
    train(spec_from_dict(tiny_doc), resume=True, reporter=reporter)
    assert f"warning: no checkpoint in {tmp_path / 'never-ran'}: starting from scratch" in out.getvalue()


def interrupt_setup(monkeypatch, error=KeyboardInterrupt):
    """A Ctrl-C (or another failure) during the teacher cache pass, after the run dir was made."""

    def stop(*args, **kwargs):
        raise error()

    monkeypatch.setattr(Trainer, "cache_teachers", stop)


def test_ctrl_c_during_setup_removes_the_run_dir_this_command_created(tmp_path, tiny_doc, monkeypatch):
    interrupt_setup(monkeypatch)
    tiny_doc["output"] = str(tmp_path / "runs" / "new")
    with pytest.raises(Interrupted, match=f"before anything was trained; removed {tmp_path / 'runs'}") as err:
        train(spec_from_dict(tiny_doc), quiet=True)
    assert err.value.run_dir is None and err.value.checkpoint is None
    assert list(tmp_path.iterdir()) == []  # runs/ too: this command had created it


def test_ctrl_c_during_setup_keeps_a_run_dir_that_existed_and_says_what_is_in_it(tmp_path, tiny_doc, monkeypatch):
    interrupt_setup(monkeypatch)
    (tmp_path / "run").mkdir()
    tiny_doc["output"] = str(tmp_path / "run")
    with pytest.raises(Interrupted) as err:
        train(spec_from_dict(tiny_doc), quiet=True)
    assert str(err.value) == (f"interrupted before the first checkpoint; {tmp_path / 'run'} existed before this "
                              "command and is kept: it holds checkpoints/ (empty), spec.yaml")
    assert err.value.run_dir == tmp_path / "run" and err.value.checkpoint is None
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "spec.yaml"]


def test_a_failure_before_training_leaves_no_run_dir(tmp_path, tiny_doc, monkeypatch):
    interrupt_setup(monkeypatch, error=MemoryError)
    tiny_doc["output"] = str(tmp_path / "run")
    with pytest.raises(MemoryError):
        train(spec_from_dict(tiny_doc), quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_baseline_starts_removes_only_the_baseline_and_says_resume(tmp_path, tiny_doc, monkeypatch):
    measure = loop.teachers_top1

    def stop_in_baseline(teachers, *args, **kwargs):  # the baseline is the run without teachers
        if not teachers:
            raise KeyboardInterrupt
        return measure(teachers, *args, **kwargs)

    monkeypatch.setattr(loop, "teachers_top1", stop_in_baseline)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"removed {run / 'baseline'}, which this command had created") as err:
        train(baseline_spec(tiny_doc, run), quiet=True)
    assert (err.value.run_dir, err.value.checkpoint) == (run, "ckpt-e0002-s000000")  # the distilled run is kept
    assert not (run / "baseline").exists() and (run / "student.safetensors").is_file()


def test_a_finished_one_epoch_run_counts_its_epoch_in_the_singular(tmp_path, tiny_doc):
    # #29: "all 1 epochs are done"
    tiny_doc["train"]["epochs"] = 1
    tiny_doc["output"] = str(tmp_path / "run")
    train(spec_from_dict(tiny_doc), quiet=True)
    reporter, out = listening_reporter()
    train(spec_from_dict(tiny_doc), resume=True, reporter=reporter)
    assert f"{tmp_path / 'run'}: its 1 epoch is done; nothing to train" in out.getvalue(), out.getvalue()


def test_the_baseline_writes_no_empty_adapters_file(tmp_path, tiny_doc):
    # #29: baseline/adapters.safetensors was a 16-byte file holding no tensor
    tiny_doc["train"]["epochs"] = 1
    run = tmp_path / "run"
    train(baseline_spec(tiny_doc, run), quiet=True)
    assert load_file(str(run / "adapters.safetensors"))  # the distilled run's projector
    assert (run / "baseline" / "student.safetensors").is_file()
    assert not (run / "baseline" / "adapters.safetensors").exists()
