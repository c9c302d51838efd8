"""benchmarks/first_step.py runs on a small timm spec and prints its table and ratio."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC = """\
name: tiny
teacher: {model: "timm:resnet18"}
student: {model: "timm:resnet18"}
data: {dataset: synthetic, image_size: 32, batch_size: 8, synthetic: {channels: 3, classes: 1000, train_size: 16}}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs:
    - {teacher: layer3, student: layer3}
"""


@pytest.mark.slow
def test_first_step_prints_both_timings_and_the_ratio(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_step.py"), "--spec", str(spec),
                           "--repeats", "1", "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "tiny.yaml: resnet18 + resnet18" in out and "1 threads, 1 repeats" in out
    assert re.search(r"\| timm.create_model \(both\) \| \d+\.\d{3} \|", out)
    assert re.search(r"\| load_spec \+ resolve_plan \| \d+\.\d{3} \|", out)
    assert re.search(r"resolve / create: \d+\.\d\d \(medians\)", out)


@pytest.mark.slow
def test_specs_with_other_models_are_refused(tmp_path):
    spec = tmp_path / "zoo.yaml"
    spec.write_text(SPEC.replace("timm:resnet18", "kdgraph:fmnist_cnn"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_step.py"), "--spec", str(spec)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "every model must be a timm: reference without kwargs" in proc.stderr
