"""`kdgraph bench SPEC`: prints both variants and the ratio, writes nothing, reports bad options as user errors."""

from click.testing import CliRunner

from kdgraph.cli.main import main

SPEC = """\
name: cli-bench
teacher: {model: "kdgraph:fmnist_resnet", kwargs: {widths: [8, 16, 32], blocks: [1, 1, 1]}}
student: {model: "kdgraph:fmnist_cnn", kwargs: {widths: [4, 8, 16]}}
data: {dataset: fashion-mnist, source: embedded, batch_size: 16, train_subset: 64, test_subset: 32}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs:
    - {teacher: layer3, student: block3}
runtime: {threads: 1}
output: OUT
"""


def run(*args):
    result = CliRunner().invoke(main, list(args), prog_name="kdgraph")
    return result.exit_code, result.output


def test_bench_prints_both_variants_and_writes_nothing(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("OUT", str(tmp_path / "run")))
    code, out = run("bench", str(spec), "--steps", "2", "--warmup", "0", "--batch", "8")
    assert code == 0, out
    assert "synthetic batch 8 x (1, 28, 28)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "hand-written" in lines and "kdgraph" in lines and "ratio kdgraph / hand-written images/s" in out
    assert not (tmp_path / "run").exists()


def test_bench_user_errors(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("OUT", str(tmp_path / "run")))
    code, out = run("bench", str(spec), "--steps", "0")
    assert code == 2 and "--steps must be at least 1" in out
    code, out = run("bench", str(spec), "--set", "distill.pairs[0].teacher=layer3.0.add", "--steps", "1")
    assert code == 2 and "distill.pairs[0].teacher" in out and "forward hooks" in out
