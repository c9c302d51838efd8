"""A run killed with SIGKILL (or stopped with SIGTERM) and resumed ends bit-identical to an uninterrupted one."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SPEC = """\
name: kill
teacher: {model: "kdgraph:fmnist_resnet", kwargs: {widths: [8, 16, 16], blocks: [1, 1, 1]}}
student: {model: "kdgraph:fmnist_cnn", kwargs: {widths: [4, 8, 16]}}
data: {dataset: fashion-mnist, source: embedded, batch_size: 32, train_subset: 640, test_subset: 64, augment: crop-flip}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs: [{teacher: layer3, student: block3}]
train: {epochs: 3, optimizer: {name: sgd, lr: 0.05}, schedule: {name: cosine, warmup_epochs: 0.5}}
runtime: {seed: 3, threads: 1}
output: {dir: OUT, keep: 2, checkpoint_every: 4}
"""


def start(spec: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.Popen([sys.executable, "-m", "kdgraph", "train", str(spec), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def write_spec(tmp_path: Path, name: str) -> tuple[Path, Path]:
    out = tmp_path / name
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.replace("OUT", str(out)))
    return spec, out


def student(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    spec, out = write_spec(tmp, "ref")
    t0 = time.perf_counter()
    proc = start(spec)
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()
    return student(out), time.perf_counter() - t0


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    weights, duration = reference
    rng = random.Random(1234)
    spec, out = write_spec(tmp_path, "killed")
    kills = 0
    for attempt in range(3):
        proc = start(spec, *(["--resume"] if attempt else []))
        # wait until training has begun (first checkpoint folder), then a random moment within the run
        deadline = time.time() + 120
        while not (out / "checkpoints").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, max(0.2, duration * 0.4)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    final = start(spec, "--resume")
    assert final.wait(timeout=300) == 0, final.stdout.read().decode()
    assert kills >= 1
    assert_same(weights, student(out))
    leftovers = [p.name for p in out.rglob("*.tmp")]
    assert leftovers == [] or all(p.startswith(".") for p in leftovers)


def test_sigterm_checkpoints_and_resumes(tmp_path, reference):
    weights, _ = reference
    spec, out = write_spec(tmp_path, "term")
    proc = start(spec)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("ckpt-*.json")) if (out / "checkpoints").is_dir() else True:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    text = proc.stdout.read().decode()
    if code == 0:  # the run happened to finish first
        pytest.skip("run finished before the signal arrived")
    assert code == 130 and "--resume" in text and "Traceback" not in text
    final = start(spec, "--resume")
    assert final.wait(timeout=300) == 0
    assert_same(weights, student(out))


def resume_words(text: str) -> list[str]:
    """The command after ``Resume with:`` / ``Start again with:``, as argv (``python -m kdgraph`` run by this
    Python)."""
    import re
    import shlex

    words = shlex.split(re.search(r"(?:Resume|Start again) with: (.*)", text).group(1))
    assert words[:3] == ["python", "-m", "kdgraph"], words
    return words[3:]


def test_sigint_prints_the_exact_command_that_resumes_the_same_run(tmp_path, reference):
    weights, _ = reference
    spec, _ = write_spec(tmp_path, "file-output")
    out = tmp_path / "set by --set" / "run"  # not the spec's `output:`, and it needs quoting
    proc = start(spec, "--set", f"output={out}", "--set", "runtime.threads=1")
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/ckpt-*.json")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, text = proc.wait(timeout=120), proc.stdout.read().decode()
    if code == 0:
        pytest.skip("run finished before the signal arrived")
    assert code == 130 and "Traceback" not in text, text
    words = resume_words(text)
    assert words == ["train", str(spec), "--set", f"output={out}", "--set", "runtime.threads=1", "--quiet",
                     "--resume"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    final = subprocess.run([sys.executable, "-m", "kdgraph", *words], capture_output=True, text=True, env=env,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert_same(weights, student(out))  # it continued this run, in this run dir
    assert not (tmp_path / "file-output").exists()


def test_sigint_during_setup_leaves_nothing_behind(tmp_path):
    spec, out = write_spec(tmp_path, "setup")
    # a long setup: the teacher's top-1 on 2,000 test images, then its outputs cached over 2,000 training images
    proc = start(spec, "--set", "data.test_subset=2000", "--set", "data.train_subset=2000")
    deadline = time.time() + 120
    while not (out / "spec.yaml").is_file():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    code, text = proc.wait(timeout=120), proc.stdout.read().decode()
    assert code == 130 and "Traceback" not in text, text
    assert f"interrupted before anything was trained; removed {out}, which this command had created" in text
    assert resume_words(text) == ["train", str(spec), "--set", "data.test_subset=2000", "--set",
                                  "data.train_subset=2000", "--quiet"]
    assert not out.exists()
