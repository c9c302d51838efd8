"""The ecosystem commands: schema, inspect --suggest / --plot, report, export, shell completion."""

import json
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from kdgraph import __version__
from kdgraph.cli.main import main
from kdgraph.models import create_model
from kdgraph.spec.jsonschema import spec_json_schema
from kdgraph.files import save_tensors

SPEC = """\
name: cli-plot
teacher: {model: "kdgraph:fmnist_resnet"}
student: {model: "kdgraph:fmnist_cnn"}
data: {dataset: fashion-mnist, source: embedded, batch_size: 32, train_subset: 64, test_subset: 32}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs:
    - {teacher: layer2, student: block1}
    - {teacher: layer3, student: block3, loss: cosine}
"""
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args, env=None):
    result = CliRunner().invoke(main, list(args), prog_name="kdgraph", env=env)
    return result.exit_code, result.output


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return str(path)


def test_version():
    code, out = run("--version")
    assert code == 0 and __version__ in out


def test_schema_prints_the_generated_schema(tmp_path):
    code, out = run("schema")
    assert code == 0 and json.loads(out) == spec_json_schema()
    code, out = run("schema", "--out", str(tmp_path / "s.json"))
    assert code == 0 and json.loads((tmp_path / "s.json").read_text()) == spec_json_schema()


def test_suggest_prints_yaml_for_distill_pairs():
    code, out = run("inspect", "kdgraph:fmnist_resnet", "kdgraph:fmnist_cnn", "--suggest")
    assert code == 0, out
    pairs = yaml.safe_load(out)["distill"]["pairs"]
    assert pairs == [{"teacher": "layer2", "student": "block1"}, {"teacher": "layer3", "student": "block3"}]
    code, out = run("inspect", "kdgraph:fmnist_resnet", "kdgraph:fmnist_cnn", "--suggest", "--json")
    assert code == 0 and json.loads(out) == pairs


def test_suggest_gives_teacher_and_student_their_own_kwargs():
    # a ViT at 32 px needs img_size, which a ResNet rejects: one --kwargs for both could not pair them
    both = ("inspect", "timm:vit_tiny_patch16_224", "timm:resnet18", "--suggest", "--input-shape", "3,32,32", "--json")
    code, out = run(*both, "--kwargs", '{"img_size": 32}')
    assert code == 2 and "timm:resnet18 rejected kwargs {'img_size': 32}" in out
    code, out = run(*both, "--teacher-kwargs", '{"img_size": 32}', "--kwargs", '{"num_classes": 10}')
    assert code == 0, out
    assert [p["teacher"] for p in json.loads(out)] == ["blocks.3", "blocks.7", "blocks.11"]
    code, out = run(*both, "--student-kwargs", "[1]")
    assert code == 2 and "--student-kwargs must be a JSON object" in out
    code, out = run("inspect", "kdgraph:fmnist_cnn", "--teacher-kwargs", "{}")
    assert code == 2 and "go with --suggest" in out


def test_target_count_is_checked():
    code, out = run("inspect", "kdgraph:fmnist_resnet", "kdgraph:fmnist_cnn")
    assert code == 2 and "two models only with --suggest" in out
    code, out = run("inspect", "kdgraph:fmnist_cnn", "--suggest")
    assert code == 2 and "TEACHER STUDENT" in out
    code, out = run("inspect", "kdgraph:fmnist_cnn", "kdgraph:fmnist_cnn", "--suggest", "--input-shape", "1,x")
    assert code == 2 and "positive integers" in out


def test_inspect_spec_plot_png_and_svg(spec_path, tmp_path):
    pytest.importorskip("matplotlib")
    code, out = run("inspect", spec_path, "--plot", str(tmp_path / "map.png"))
    assert code == 0, out
    assert "pair:block1->layer2" in out  # the tables are still printed
    assert (tmp_path / "map.png").read_bytes().startswith(PNG)
    code, out = run("inspect", spec_path, "--json", "--plot", str(tmp_path / "map.svg"))
    assert code == 0
    svg = (tmp_path / "map.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    code, out = run("inspect", "kdgraph:fmnist_cnn", "--plot", str(tmp_path / "one.png"))
    assert code == 0 and (tmp_path / "one.png").read_bytes().startswith(PNG)


def test_plot_rows_keep_stages_and_tapped_layers(spec_path):
    from kdgraph.cli.plot import plot_rows
    from kdgraph.spec import load_spec
    from kdgraph.plan import resolve_plan

    gp = resolve_plan(load_spec(spec_path))
    rows = [i.name for i in plot_rows(gp.teacher_map, ["layer3.1.conv2"])]
    # execution order: a tapped layer inside a stage comes before the stage's output
    assert rows[:5] == ["stem", "layer1", "layer2", "layer3.1.conv2", "layer3"] and rows[-1] == "fc"
    rows = [i.name for i in plot_rows(gp.teacher_map, ["layer3:input", "layer2:output"])]
    assert rows == ["stem", "layer1", "layer2", "layer3:input", "layer3", "pool", "fc"]


def test_plot_errors_exit_2(spec_path, tmp_path, monkeypatch):
    code, out = run("inspect", spec_path, "--plot", str(tmp_path / "map.gif"))
    assert code == 2 and ".png" in out
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out = run("inspect", spec_path, "--plot", str(tmp_path / "map.png"))
    assert code == 2 and "pip install 'kdgraph[plot]'" in out
    code, out = run("report", str(tmp_path))
    assert code == 2 and "pip install 'kdgraph[plot]'" in out


def write_metrics(run_dir, epochs=3):
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "loss/ce": 2.0 / e, "loss/logits": 1.0 / e, "loss/pair:block3->layer3": 0.5 / e,
             "loss/total": 3.5 / e, "train_top1": 0.2 * e, "val_top1": 0.15 * e, "lr": 0.1 / e,
             "images_per_s": 100.0, "time_s": 1.0} for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_draws_curves(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "run")
    code, out = run("report", str(tmp_path / "run"))
    assert code == 0, out
    assert (tmp_path / "run" / "report.png").read_bytes().startswith(PNG)
    code, out = run("report", str(tmp_path / "run"), "--out", str(tmp_path / "curves.svg"))
    assert code == 0 and "<svg" in (tmp_path / "curves.svg").read_text()


def test_report_errors_exit_2(tmp_path):
    pytest.importorskip("matplotlib")
    code, out = run("report", str(tmp_path / "nowhere"))
    assert code == 2 and "metrics.jsonl" in out and "run directory" in out
    (tmp_path / "metrics.jsonl").write_text("")
    code, out = run("report", str(tmp_path))
    assert code == 2 and "no epoch has finished" in out
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    code, out = run("report", str(tmp_path))
    assert code == 2 and "metrics.jsonl:1 is not JSON" in out


def test_export_command(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.yaml").write_text(yaml.safe_dump({"student": {"model": "kdgraph:fmnist_cnn"}}))
    model = create_model("kdgraph:fmnist_cnn")
    save_tensors(run_dir / "student.safetensors", model.state_dict())
    code, out = run("export", str(run_dir), "--out", str(tmp_path / "s.safetensors"))
    assert code == 0, out
    fresh = create_model("kdgraph:fmnist_cnn")
    fresh.load_state_dict(load_file(str(tmp_path / "s.safetensors")), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    code, out = run("export", str(tmp_path), "--out", str(tmp_path / "t.safetensors"))
    assert code == 2 and "not a kdgraph run directory" in out


def test_shell_completion():
    code, out = run(env={"_KDGRAPH_COMPLETE": "bash_source"})
    assert code == 0 and "_KDGRAPH_COMPLETE=bash_complete" in out
    code, out = run(env={"_KDGRAPH_COMPLETE": "bash_complete", "COMP_WORDS": "kdgraph ex", "COMP_CWORD": "1"})
    assert code == 0 and "plain,export" in out
