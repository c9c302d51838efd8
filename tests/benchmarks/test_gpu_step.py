"""benchmarks/gpu_step.py runs on CPU at a tiny size: both pairs, CUDA-only variants skipped with a note."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_step_tiny_cpu_run_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--image-size", "32",
         "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--variants", "kdgraph,eager-hooks,fx-reduce-overhead", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    for pair in ("resnet34-resnet18", "vit_small-vit_tiny"):
        rows = [line for line in table.splitlines() if line.startswith(f"| {pair} | 2 |")]
        variants = [line.split("|")[3].strip() for line in rows]
        assert variants[:2] == ["eager-hooks", "kdgraph"], variants  # kdgraph always runs last
        assert "fx-reduce-overhead" in variants and "skipped on cpu: needs CUDA" in table
        assert any("kdgraph / best hand-written (eager-hooks)" in line for line in rows)
        # same initial weights, same batch: the same loss at the first step
        losses = {line.split("|")[3].strip(): float(line.split("|")[9]) for line in rows[:2]}
        assert losses["kdgraph"] == pytest.approx(losses["eager-hooks"], rel=1e-4)


def test_unknown_variant_is_a_usage_error():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--variants", "nope"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    assert proc.returncode == 2 and "unknown nope; valid: eager-hooks" in proc.stderr
