"""The run directory: created only once everything validated; never overwritten without being asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdgraph.errors import RunDirError
from kdgraph.files import atomic_write_text

if TYPE_CHECKING:
    from kdgraph.session.distributed import DistContext

__all__ = ["RunDir", "SharedRunDir", "open_run_dir"]

MARKER = "spec.yaml"


class RunDir:
    """Layout: spec.yaml, metrics.jsonl, checkpoints/, student.safetensors, best.safetensors, adapters.safetensors,
    summary.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self.student = self.path / "student.safetensors"
        self.best = self.path / "best.safetensors"
        self.adapters = self.path / "adapters.safetensors"
        self.summary = self.path / "summary.json"
        self.spec = self.path / MARKER

    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse to touch a non-empty directory unless asked; ``overwrite`` only clears a kdgraph run dir."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{str(self.path)!r} exists and is not a directory", key="output")
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        if resume:
            if not (self.path / MARKER).is_file():
                raise RunDirError(f"{str(self.path)!r} is not a kdgraph run directory (no {MARKER}); nothing to resume",
                                  key="output")
            return
        if not overwrite:
            raise RunDirError(
                f"run directory {str(self.path)!r} already exists and is not empty; pass --resume to continue it, "
                f"--overwrite to replace it, or choose another `output:` (e.g. --set output={self.path}-2)",
                key="output",
            )
        if not (self.path / MARKER).is_file():
            raise RunDirError(f"refusing to overwrite {str(self.path)!r}: it is not a kdgraph run directory "
                              f"(no {MARKER}); choose another `output:`", key="output")

    def prepare(self, spec_doc: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
        self.check(overwrite=overwrite, resume=resume)
        if overwrite and not resume and self.path.is_dir():
            shutil.rmtree(self.path)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a parent is a file, a read-only folder, ...
            raise RunDirError(f"cannot create the run directory {str(self.path)!r}: {err.strerror or err}; choose "
                              "another `output:`", key="output") from None
        if not (resume and self.spec.is_file()):
            atomic_write_text(self.spec, yaml.safe_dump(spec_doc, sort_keys=False))

    def spec_changes(self, spec_doc: dict[str, Any]) -> list[str]:
        """The keys (``train.optimizer.name``, ``distill.pairs[0].teacher``) where ``spec_doc`` differs from the
        run's ``spec.yaml``; empty when they agree or when spec.yaml cannot be read."""
        try:
            saved = yaml.safe_load(self.spec.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return []
        return _changed_keys(saved, spec_doc, "")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in rows))

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")


class SharedRunDir(RunDir):
    """The run directory seen by every rank: all read it (resume), only rank 0 writes."""

    def __init__(self, path: str | Path, ctx: DistContext):
        super().__init__(path)
        self.ctx = ctx

    def prepare(self, spec_doc: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
        self.check(overwrite=overwrite, resume=resume)  # every rank: same files, same verdict, same error
        self.ctx.barrier()
        if self.ctx.is_main:
            super().prepare(spec_doc, overwrite=overwrite, resume=resume)
        self.ctx.barrier()

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        if self.ctx.is_main:
            super().write_metrics(rows)

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        if self.ctx.is_main:
            super().write_json(path, data)


def open_run_dir(path: str | Path, dist: DistContext) -> RunDir:
    """The run directory of a run in ``dist``'s processes: a plain ``RunDir`` in one process, else one whose writes
    happen on rank 0 only (``prepare`` also synchronises the ranks)."""
    return SharedRunDir(path, dist) if dist.enabled else RunDir(path)


def _changed_keys(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in {**old, **new} for key in _changed_keys(old.get(k), new.get(k), f"{path}.{k}".lstrip("."))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [key for i, (a, b) in enumerate(zip(old, new)) for key in _changed_keys(a, b, f"{path}[{i}]")]
    return [] if old == new else [path or "(the whole spec)"]
