"""What `kdgraph inspect` says about how a model was traced: the forward arguments fixed for fx."""

import json

import pytest
from click.testing import CliRunner

from kdgraph.cli.main import main

FLAGGED = """\
import torch
from torch import nn


class Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x, feats=False):
        f = self.block(x)
        logits = self.fc(f.mean((2, 3)))
        return (logits, f) if feats else logits
"""

SPEC = """\
name: flagged
teacher: {model: "python:kdgraph_flagged_net:Flagged"}
student: {model: "python:kdgraph_flagged_net:Flagged"}
data: {dataset: synthetic, image_size: 16, batch_size: 8, synthetic: {channels: 3, classes: 4, train_size: 16}}
distill:
  pairs:
    - {teacher: block, student: block}
train: {epochs: 1}
"""


@pytest.fixture()
def flagged_module(tmp_path, monkeypatch):
    (tmp_path / "kdgraph_flagged_net.py").write_text(FLAGGED)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run(*args):
    """Exit code and output, with runs of white space made one space (rich wraps a long table title)."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_inspect_model_names_the_fixed_argument(flagged_module):
    code, out = run("inspect", "python:kdgraph_flagged_net:Flagged", "--input-shape", "3,16,16")
    assert code == 0, out
    assert "(traced with fx, input 3×16×16, fixed feats=False)" in out
    code, out = run("inspect", "kdgraph:fmnist_cnn")
    assert code == 0 and "(traced with fx, input 1×28×28)" in out  # nothing fixed, nothing said


def test_inspect_spec_json_and_table_report_fixed_arguments(flagged_module):
    spec = flagged_module / "spec.yaml"
    spec.write_text(SPEC)
    result = CliRunner().invoke(main, ["inspect", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    traced = json.loads(result.stdout)["traced"]  # stderr holds the warning that the teacher has no weights
    fixed = {"method": "fx", "fixed_args": {"feats": False}}
    assert traced == {"student": fixed, "teachers": {"teacher": fixed}}
    code, out = run("inspect", str(spec))
    assert code == 0 and out.count("fixed feats=False") == 2  # the teacher's map and the student's


# --- #29: tables fitted to the terminal's width -------------------------------------------------------------------
QUICK = """\
name: quick
teacher: {model: "kdgraph:fmnist_resnet"}
student: {model: "kdgraph:fmnist_cnn"}
data: {dataset: fashion-mnist, source: embedded, batch_size: 32, train_subset: 64, test_subset: 32}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs:
    - {teacher: layer3, student: block3, projector: auto, normalize: none, loss: mse}
"""


def printed(args, columns):
    result = CliRunner().invoke(main, args, env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def widest(lines):
    from rich.cells import cell_len

    return max(cell_len(line.rstrip()) for line in lines)


@pytest.mark.parametrize("command", [["validate"], ["inspect"], ["train", "--dry-run"]])
def test_the_loss_terms_fit_a_60_column_terminal_one_record_per_term(tmp_path, command):
    spec = tmp_path / "spec.yaml"
    spec.write_text(QUICK)
    lines = [line for line in printed([*command, str(spec)], "60") if not line.endswith(": ok")]  # a path, no table
    assert widest(lines) <= 60, "\n".join(lines)
    terms = lines[lines.index("quick: loss terms"):]
    assert terms[1] == "ce  student output  teacher -  loss labels  weight 1", terms
    pair = next(i for i, line in enumerate(terms) if line.startswith("pair:block3->layer3"))
    record = " ".join(line.strip() for line in terms[pair:pair + 3])  # a term's fields stay together, wrapped
    assert record == ("pair:block3->layer3  student block3 32×7×7 teacher layer3 64×7×7  s-side conv1x1 32→64 "
                      "t-side identity  loss mse  weight 1"), terms


def test_the_loss_terms_stay_a_table_where_they_fit(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(QUICK)
    lines = printed(["validate", str(spec)], None)  # a pipe without COLUMNS: laid out wide, boxed as before
    assert any(line.startswith("┃ term ") for line in lines), lines
    lines = printed(["validate", str(spec)], "100")  # no room for the borders: the same table without them
    assert widest(lines) <= 100 and any(line.split() == ["term", "student", "teacher", "s-side", "t-side", "loss",
                                                         "weight"] for line in lines), lines


def test_a_layer_map_fits_60_columns_with_its_kinds_cut(tmp_path):
    lines = printed(["inspect", "timm:resnet18"], "60")
    assert widest(lines) <= 60, "\n".join(lines)
    assert lines[1].split() == ["name", "kind", "shape", "ch", "stride"]  # the empty pair column left out
    assert next(line for line in lines if line.startswith("global_pool ")).split() == [
        "global_pool", "SelectAdap…", "512", "512", "-"]


def test_the_run_dir_line_names_what_the_run_holds(tmp_path, capsys):
    # #29: it named student.safetensors, metrics.jsonl and checkpoints/ only, not best.safetensors nor baseline/
    from types import SimpleNamespace

    from kdgraph.cli.render import print_summary

    for name in ("student.safetensors", "best.safetensors", "adapters.safetensors", "metrics.jsonl", "summary.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "baseline").mkdir()
    summary = {"name": "q", "teacher_top1": 0.9, "student_top1": 0.8, "baseline_top1": 0.7}
    print_summary(SimpleNamespace(summary=summary, run_dir=tmp_path))
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"run dir: {tmp_path} (student.safetensors, best.safetensors, adapters.safetensors, metrics.jsonl, "
        "summary.json, checkpoints/, baseline/)")
