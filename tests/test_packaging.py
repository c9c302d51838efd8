"""A clone's own folder must not shadow the installed package (issue #14).

After ``git clone … /somewhere/kdgraph && pip install -e /somewhere/kdgraph``, Python started in ``/somewhere`` (a
script there, or ``PYTHONPATH=/somewhere``) sees the folder ``kdgraph/`` first. With the package at the top of the
repository and setuptools' editable finder, that folder became a namespace package and hid the real one
(``ImportError: cannot import name '__version__'``). With the package under ``src/`` the clone's folder holds no
importable package code, and the editable install puts ``src`` itself on the path.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kdgraph

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_lives_under_src():
    assert Path(kdgraph.__file__).resolve().parent == ROOT / "src" / "kdgraph"
    assert not (ROOT / "kdgraph").exists()


def test_the_clones_parent_folder_does_not_shadow_the_package(tmp_path):
    parent = tmp_path / "somewhere"
    clone = parent / "kdgraph"  # what `git clone URL /somewhere/kdgraph` leaves at the top
    clone.mkdir(parents=True)
    for name in ("README.md", "pyproject.toml", "docs", "specs", "benchmarks"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, clone / name)
    env = dict(os.environ, PYTHONPATH=str(parent), HF_HUB_OFFLINE="1")
    cli = shutil.which("kdgraph", path=str(Path(sys.executable).parent)) or shutil.which("kdgraph")
    command = [cli, "--help"] if cli else [sys.executable, "-m", "kdgraph", "--help"]
    help_run = subprocess.run(command, cwd=parent, env=env, capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "Traceback" not in help_run.stderr, help_run.stderr
    assert "declarative, graph-based feature distillation" in help_run.stdout

    snippet = re.search(r"## Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    (parent / "api_example.py").write_text(snippet)  # a script in /somewhere: its folder is first on sys.path
    api_run = subprocess.run([sys.executable, "api_example.py"], cwd=parent, env=env, capture_output=True,
                             text=True, timeout=300)
    assert api_run.returncode == 0, api_run.stderr
    top1, pair_loss = (float(v) for v in api_run.stdout.split()[-2:])
    assert 0 <= top1 <= 1 and pair_loss > 0
