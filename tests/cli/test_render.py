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
