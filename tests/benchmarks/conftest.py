"""Helpers of the step-by-step reference tests: load a benchmarks/ script, and the adapters kdgraph starts from.

Only kdgraph's public entry points are used: ``train`` and what its ``TrainResult`` holds."""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.data.views import ViewMaker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def script():
    """``script("references/self_distillation")``: a script of benchmarks/ as a module (the references stay plain
    scripts, importable by no package)."""

    def load(path: str):
        spec = importlib.util.spec_from_file_location(Path(path).name, ROOT / "benchmarks" / f"{path}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def initial_adapters():
    """``initial_adapters(spec, student=..., teacher=...)``: the student-side adapters (projectors, heads) a run of
    ``spec`` starts from, in the order kdgraph builds them (pair ``i``, or self-distillation head ``i``, at ``i``).

    A run seeds every generator before it builds anything, so a run of the same spec with the same models builds the
    same adapters. This one trains a single step at a learning rate of 1e-300, which leaves every parameter as it was
    built (float64 cannot represent the change), and returns what it built."""

    def build(spec, student=None, teacher=None) -> list[nn.Module]:
        doc = spec.model_dump(mode="json")
        doc["train"].update(epochs=1, max_steps_per_epoch=1, stages=[])
        doc["train"]["optimizer"]["lr"] = 1e-300
        doc["eval"]["every"] = 100
        result = train(spec_from_dict(doc), student=copy.deepcopy(student), teacher=copy.deepcopy(teacher),
                       write=False, quiet=True)
        return list(result.plan.graph.student_adapters.values())  # keyed by the term's label, in term order

    return build


def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s parameters into ``target``'s, matched by registration order (the shapes must agree): kdgraph's
    modules and the references' are written independently, with their own names."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for a, b in pairs:
            assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
            b.copy_(a)


@pytest.fixture(scope="session")
def copy_params():
    return copy_parameters


@pytest.fixture(scope="session")
def kdgraph_views():
    """``kdgraph_views(spec, images)``: the ``ViewMaker`` of a run of ``spec`` on ``images`` training images of shape
    ``(1, 28, 28)``, whose ``draw(index, view=epoch)`` gives the numbers of the views kdgraph trains on in that epoch
    (crops, mixing partners and ratios: a function of (seed, epoch, image) alone), for a reference to replay.
    ``role=TEACHER`` gives the teachers' own view under ``data.views: independent``."""

    def make(spec, images: int, image_shape=(1, 28, 28)) -> ViewMaker:
        return ViewMaker(spec.data, num_classes=10, seed=spec.runtime.seed, dataset=range(images),
                         image_shape=image_shape, two_views=True)

    return make
