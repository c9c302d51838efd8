"""Step by step, kdgraph's self-distillation equals the independent loop of benchmarks/references/self_distillation.py.

The shipped spec (specs/methods/self_distillation.yaml) on the first 128 embedded images: the same initial ResNet
(passed as a live module), the heads' initial weights copied from the ones kdgraph builds, kdgraph's own batch order
and crops (``ViewMaker.draw``: per image, a function of (seed, epoch, image) alone) replayed into the reference's
crop. Each kdgraph epoch is one step (``max_steps_per_epoch: 1``), in
float64; every step's total loss must agree within 1e-5, and so must the test top-1 of every head afterwards.

The reference crops the float32 normalised image padded with normalised black, as kdgraph does, rather than the
[0, 1] image padded with 0 and normalised after: the two pad colours differ in float32's last bit (6e-8), and at
lr 0.1 on small batches that difference alone moves the fifth loss by 5e-4. With the same colour the losses agree
to 1e-13.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.data.loader import epoch_indices
from kdgraph.spec import load_spec
from kdgraph.train import train

ROOT = Path(__file__).resolve().parents[2]
STEPS, TRAIN, TEST, BATCH, SEED = 5, 128, 32, 16, 3


@pytest.mark.parametrize("variant", ["byot", "deep-supervision"])
def test_kdgraph_steps_equal_the_plain_pytorch_reference(variant, script, initial_adapters, copy_params, kdgraph_views,
                                                         tmp_path):
    ref, fidelity = script("references/self_distillation"), script("fidelity")
    family = fidelity.FAMILIES["self_distillation"]
    overrides = [*family.variants[variant].overrides, f"data.train_subset={TRAIN}", f"data.test_subset={TEST}",
                 f"data.batch_size={BATCH}", f"runtime.seed={SEED}", f"train.epochs={STEPS}",
                 "train.max_steps_per_epoch=1", f"eval.every={STEPS}", "runtime.precision=fp64",
                 f"output={tmp_path / 'run'}"]
    spec = load_spec(family.spec, overrides)
    torch.manual_seed(0)
    student, heads = ref.ResNet().double(), ref.make_heads(variant).double()
    built = initial_adapters(spec, student=student)
    for i, head in enumerate(heads):
        copy_params(built[i], head)

    result = train(spec, student=copy.deepcopy(student), write=False, quiet=True)
    ours = [row["loss/total"] for row in result.metrics]

    x01, y = ref.load_split(None, "train", "embedded")
    x01, y = x01[:TRAIN], y[:TRAIN]
    optimizer, scheduler = ref.make_optimizer([*student.parameters(), *heads.parameters()], 0.1, STEPS)
    views = kdgraph_views(spec, TRAIN)  # kdgraph's crops: per image, a function of (seed, epoch, image)
    theirs = []
    for step in range(STEPS):
        idx = epoch_indices(TRAIN, seed=SEED, epoch=step, shuffle=True)[:BATCH]
        tops, lefts, flips = views.draw(idx, view=step).crop.unbind(1)
        black = (0 - ref.MEAN) / ref.STD  # crop the normalised image, padded with normalised black, as kdgraph does
        x = ref.crop_and_flip(ref.normalise(x01[idx]), tops, lefts, flips.bool(), 2, fill=black).double()
        theirs.append(ref.train_step(variant, student, heads, optimizer, scheduler, x, y[idx])["total"])
    assert len(ours) == STEPS
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{variant}: kdgraph {ours} vs {theirs}")
    assert len(set(np.round(theirs, 4))) == STEPS  # the loss moves: the steps really train

    x_test, y_test = ref.load_split(None, "test", "embedded")
    accuracies = ref.evaluate(student, heads, x_test[:TEST].double(), y_test[:TEST])
    for key in ("val_top1", "val_top1/layer1", "val_top1/layer2", "val_top1/deepest", "val_top1/ensemble"):
        assert result.metrics[-1][key] == pytest.approx(accuracies[key], abs=1e-9), key
