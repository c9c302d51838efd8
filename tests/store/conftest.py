"""Shared store-test fixtures: a tiny distillation spec with augmentation and mixing, its store, reading a store's
files, and what a run did (every step's loss, every teacher forward)."""

import json
from pathlib import Path

import pytest

from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.spec import spec_from_dict
from kdgraph.train import Trainer

TINY = {
    "name": "tiny-store",
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 96,
             "test_subset": 32, "augment": "resized-crop-flip", "mix": "mixup"},
    "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse", "pool": "gap"}]},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "runtime": {"seed": 0, "threads": 1},
}


@pytest.fixture
def store_spec():
    """``store_spec(**sections)``: the tiny spec with sections updated (``data={...}``, ``teacher={...}``...)."""

    def make(**sections):
        doc = json.loads(json.dumps(TINY))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key].update(value)
            else:
                doc[key] = value
        return spec_from_dict(doc)

    return make


@pytest.fixture
def store_files():
    """``store_files(path)``: every file of a store by relative path (the bytes two stores must share to be
    identical; hidden temporary files included)."""

    def read(path: Path) -> dict[str, bytes]:
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}

    return read


@pytest.fixture
def seeded_plan():
    """``seeded_plan(spec)``: the plan as ``train`` and ``teach`` resolve it, seeded first (the tiny teacher has
    random weights, drawn from the seed, and a store checks them)."""
    from kdgraph.plan import resolve_plan
    from kdgraph.runtime import seed_everything

    def resolve(spec):
        seed_everything(spec.runtime.seed)
        return resolve_plan(spec)

    return resolve


@pytest.fixture
def steps(monkeypatch):
    """Every step's total loss, by the run that is going on (``steps["run"] = name`` before it starts)."""
    record: dict = {"run": None}
    step = Trainer.step

    def recorded(self, *args, **kwargs):
        values = step(self, *args, **kwargs)
        record.setdefault(record["run"], []).append(float(values["total"]))
        return values

    monkeypatch.setattr(Trainer, "step", recorded)
    return record


@pytest.fixture
def teacher_forwards(monkeypatch):
    """The batch size of every teacher forward (``FrozenTeacher``) from now on."""
    calls = []
    forward = FrozenTeacher.forward
    monkeypatch.setattr(FrozenTeacher, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    return calls
