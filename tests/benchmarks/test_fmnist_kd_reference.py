"""Step by step, kdgraph's training equals the independent plain-PyTorch loop of benchmarks/references/fmnist_kd.py.

Same initial weights (the student and teacher passed as live modules, the adapter's initial weights copied to the
reference), the same images (idx files written from the embedded subset, read by each side's own reader), the same
order and crops (kdgraph's own per-image draws, ``ViewMaker.draw``, replayed into the reference's crop): then every
step's loss must agree within 1e-5. Both run in float64 (``runtime.precision: fp64``): the projector recipe's log-sum of fourth powers is chaotic
enough that float32 rounding alone (the reference against itself with channels-last convolutions) moves its sixth
loss by 1e-3. The images start as float32 on both sides: kdgraph keeps the normalised data set in float32 and
converts batches to float64, so the reference normalises its float32 crops before converting too (normalising in
float64 instead moves the first loss by 2e-8, which the log-sum without BatchNorm grows to 1e-4 by the sixth step).
Each kdgraph epoch is one step (``max_steps_per_epoch: 1``), so the per-epoch metrics are per-step
losses and the whole pipeline is compared: loader, normalisation, crop-flip, views, graph, losses, optimizer,
schedule.
"""

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.data.loader import epoch_indices
from kdgraph.spec import load_spec
from kdgraph.train import train
from kdgraph.plan import resolve_plan
from kdgraph.runtime import seed_everything
from kdgraph.data.views import ViewMaker

ROOT = Path(__file__).resolve().parents[2]
STEPS, TRAIN, BATCH, SEED = 6, 256, 64, 3


def load(path: str):
    """A script of benchmarks/ as a module (the reference stays a plain script, importable by no package)."""
    spec = importlib.util.spec_from_file_location(Path(path).name, ROOT / "benchmarks" / f"{path}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory, fmnist_subset):
    """The first 256 training and 128 test images of the embedded subset, as the idx files both sides read."""
    return fmnist_subset(tmp_path_factory.mktemp("fmnist"), TRAIN, 128)


def kdgraph_spec(variant: str, root: Path, tmp_path: Path):
    overrides = [f"data.root={root}", f"data.batch_size={BATCH}", "teacher.weights=null", f"runtime.seed={SEED}", f"train.epochs={STEPS}",
                 "train.max_steps_per_epoch=1", "eval={every: 100}", "runtime.precision=fp64",
                 f"output={tmp_path / 'run'}"]
    return load_spec(ROOT / "benchmarks" / "references" / "fmnist_kd.yaml", [*load("fidelity").VARIANTS[variant],
                                                                           *overrides])


@pytest.mark.parametrize("variant", ["kd", "fitnet", "projector", "projector-nonorm", "projector-l2"])
def test_kdgraph_steps_equal_the_plain_pytorch_reference(variant, idx_root, tmp_path, monkeypatch):
    ref = load("references/fmnist_kd")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "references"))  # python:fmnist_kd:... in the spec
    torch.manual_seed(0)
    teacher, student = ref.Teacher().eval().double(), ref.Student().double()
    with torch.no_grad():  # a teacher with BatchNorm statistics that are not the identity
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    spec = kdgraph_spec(variant, idx_root, tmp_path)

    # the adapter kdgraph will create: same seed, same construction order as train()
    seed_everything(SEED)
    plan = resolve_plan(spec, student=copy.deepcopy(student), teacher=copy.deepcopy(teacher))
    adapter = ref.make_adapter(variant).double()
    if variant != "kd":
        adapter.load_state_dict(plan.graph.student_adapters[plan.pairs[0].key].proj.state_dict())

    result = train(spec, student=copy.deepcopy(student), teacher=copy.deepcopy(teacher), write=False, quiet=True)
    ours = [row["loss/total"] for row in result.metrics]

    x01, y = ref.load_split(idx_root, "train")
    optimizer, scheduler = ref.make_optimizer([*student.parameters(), *adapter.parameters()], 0.05, STEPS)
    # kdgraph's views: image i of epoch e gets the crop of view e, a function of (seed, e, i) alone
    views = ViewMaker(spec.data, num_classes=10, seed=SEED, dataset=plan.data.train, image_shape=(1, 28, 28))
    theirs = []
    for step in range(STEPS):
        idx = epoch_indices(TRAIN, seed=SEED, epoch=step, shuffle=True)[:BATCH]
        tops, lefts, flips = views.draw(idx, view=step).crop.unbind(1)
        x = ref.normalise(ref.crop_and_flip(x01[idx], tops, lefts, flips, 2)).double()
        theirs.append(ref.train_step(variant, student, adapter, teacher, optimizer, scheduler, x, y[idx])["total"])
    assert len(ours) == STEPS
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{variant}: kdgraph {ours} vs {theirs}")
    assert len(set(np.round(theirs, 4))) == STEPS  # the loss moves: the steps really train
