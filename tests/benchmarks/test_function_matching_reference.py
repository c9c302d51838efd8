"""Step by step, kdgraph's function matching equals the independent loop of benchmarks/references/function_matching.py.

The shipped spec (specs/methods/function_matching.yaml) and each ablation variant of benchmarks/fidelity.py, on 256
images written as idx files: the same initial student and teacher (live modules), kdgraph's own batch order, crop
boxes, flips, mixing partners and ratios (``ViewMaker.draw``: per image, a function of (seed, epoch, image) alone)
replayed into the reference's own crop (a bilinear resampler written out pixel by pixel) and mixup. Each kdgraph epoch is one step (``max_steps_per_epoch: 1``), in float64; every step's loss
must agree within 1e-5. The crops are computed in float32 on both sides, as kdgraph augments the float32 batch before
converting it.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.data.loader import epoch_indices
from kdgraph.spec import load_spec
from kdgraph.train import train
from kdgraph.data.views import TEACHER

STEPS, TRAIN, BATCH, SEED = 5, 256, 32, 3


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory, fmnist_subset):
    """The first 256 training and 64 test images of the embedded subset, as the idx files both sides read."""
    return fmnist_subset(tmp_path_factory.mktemp("fmnist"), TRAIN, 64)


def replay(ref, x, idx, params):
    """The reference's views of images ``idx`` with kdgraph's numbers ``params`` (``ViewMaker.draw``): each image's
    inception box and flip, and with mixing its partner (seen through the partner's own box) and its ratio."""
    crop = lambda c: (c[:, :4], c[:, 4] > 0.5)  # noqa: E731
    partner = None if params.partner is None else (x[params.partner], *crop(params.partner_crop))
    return ref.views(x[idx], *crop(params.crop), params.ratio, partner)


def teacher_and_student(ref):
    torch.manual_seed(0)
    teacher, student = ref.Teacher().eval().double(), ref.Student().double()
    with torch.no_grad():  # a teacher with BatchNorm statistics that are not the identity
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    return teacher, student


@pytest.mark.parametrize("variant", ["function-matching", "independent", "fixed", "fixed-nomix", "consistent-nomix",
                                     "alone"])
def test_kdgraph_steps_equal_the_plain_pytorch_reference(variant, idx_root, script, kdgraph_views, tmp_path):
    ref, fidelity = script("references/function_matching"), script("fidelity")
    family = fidelity.FAMILIES["function_matching"]
    overrides = ["teacher.weights=null", *family.variants[variant].overrides, f"data.root={idx_root}",
                 f"data.train_subset={TRAIN}", f"data.batch_size={BATCH}", f"runtime.seed={SEED}", f"train.epochs={STEPS}",
                 "train.max_steps_per_epoch=1", "train.schedule.warmup_epochs=2", "eval.every=100",
                 "runtime.precision=fp64", f"output={tmp_path / 'run'}"]
    spec = load_spec(family.spec, overrides)
    teacher, student = teacher_and_student(ref)
    models = {"teacher": copy.deepcopy(teacher)} if variant != "alone" else {}
    result = train(spec, student=copy.deepcopy(student), write=False, quiet=True, **models)
    ours = [row["loss/total"] for row in result.metrics]

    x, y = ref.load_split(idx_root, "train")  # normalised float32, as kdgraph keeps it
    cache = ref.cached_logits(teacher, x.double()) if variant.startswith("fixed") else None
    optimizer, scheduler = ref.make_optimizer(student, 3e-3, STEPS, warmup=2)
    views = kdgraph_views(spec, TRAIN)
    mixing = variant not in ("fixed-nomix", "consistent-nomix")
    onehot = torch.nn.functional.one_hot(y, 10).float()
    theirs = []
    for step in range(STEPS):
        idx = epoch_indices(TRAIN, seed=SEED, epoch=step, shuffle=True)[:BATCH]
        shared = views.draw(idx, view=step)
        x_s = replay(ref, x, idx, shared).double()
        x_t = replay(ref, x, idx, views.draw(idx, view=step, role=TEACHER)).double() if variant == "independent" else None
        target = ref.mixup(onehot[idx], shared.ratio, onehot[shared.partner]).double() if mixing else y[idx]
        theirs.append(ref.train_step(variant, student, teacher, optimizer, scheduler, x_s, x_t, target,
                                     None if cache is None else cache[idx])["total"])
    assert len(ours) == STEPS
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{variant}: kdgraph {ours} vs {theirs}")
    assert len(set(np.round(theirs, 4))) == STEPS  # the loss moves: the steps really train
