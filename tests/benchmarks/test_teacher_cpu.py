"""benchmarks/teacher_cpu.py: the fused oneDNN teacher it times computes the folded teacher's outputs."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_teacher_cpu_variants_agree_with_the_plain_teacher():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "teacher_cpu.py"), "--threads", "1",
                           "--batch-size", "8", "--rounds", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:]}
    assert list(rows) == ["plain", "kdgraph", "onednn", "bf16"]
    assert float(rows["plain"][2]) == 1.0 and float(rows["plain"][4]) == 0.0
    for exact in ("kdgraph", "onednn"):  # folded and fused: the same function, float rounding apart
        assert float(rows[exact][4]) < 1e-4, rows[exact]
    assert float(rows["bf16"][4]) > 1e-4  # bf16 really ran in bf16
