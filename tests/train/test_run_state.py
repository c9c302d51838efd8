"""Resuming redoes nothing that finished, says when there is nothing to resume, and an interrupted or failed start
leaves no half-made run directory behind (while anything that existed before is kept)."""

import io
import json
import shutil

import torch
from rich.console import Console
from safetensors.torch import load_file

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.train.progress import Reporter


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
