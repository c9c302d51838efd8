"""Shared fixtures of the bad-input corpus: a user work dir with files of theirs, snapshots, one-thread torch."""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kdgraph.cli.main import main

# Files every case's work dir holds before the command runs: a kdgraph run dir and a folder that is not one.
USER_FILES = {
    "runs/prev/spec.yaml": "name: prev\nstudent: {model: 'kdgraph:fmnist_cnn'}\n",
    "runs/prev/metrics.jsonl": '{"epoch": 1, "val_top1": 0.5}\n',
    "runs/prev/checkpoints/keep.txt": "an earlier run's file\n",
    "mine/notes.txt": "the user's own notes\n",
}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: kind, size, mtime (ns) and content hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
            else:
                out[rel] = ("dir" if path.is_dir() else "other", st.st_mtime_ns)
    return out


def diff(before: dict, after: dict) -> list[str]:
    changed = [f"+ {k}" for k in after.keys() - before.keys()] + [f"- {k}" for k in before.keys() - after.keys()]
    changed += [f"~ {k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    return sorted(changed)


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared; one torch thread makes every probe forward several times faster here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A user's folder, made the current directory: relative paths in specs (output, weights, roots) land here."""
    for rel, text in USER_FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli():
    """Run the CLI in-process: (exit code, stdout+stderr, uncaught exception or None)."""

    def run(args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        exc = result.exception
        if isinstance(exc, SystemExit):
            exc = None
        return result.exit_code, result.output, exc

    return run


@pytest.fixture
def snap():
    return snapshot, diff
