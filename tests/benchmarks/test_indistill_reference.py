"""Step by step, kdgraph's InDistill equals the independent loop of benchmarks/references/indistill.py.

The shipped spec (specs/methods/indistill.yaml) and every variant of benchmarks/fidelity.py's ``indistill`` family
(the curriculum, all layers at once, the FitNet warm-up, KD only, the student alone, and the stage-length search's
two), shortened to 6 epochs (10 for the long stages; the last stage gives way), on 256 images written as idx files:
the same initial student and teacher (live modules), the FitNet projector's initial weights copied from the one
kdgraph builds, kdgraph's own batch order. The reference prunes the teacher itself; the channels it keeps must be the
ones kdgraph writes to prune_masks.json. Each kdgraph epoch is one step, in float64, so every stage of the curriculum
is crossed; every step's loss must agree within 1e-5, and so must the final top-1 and retrieval mAP.
"""

import copy
import json

import numpy as np
import pytest
import torch

from kdgraph.data.loader import epoch_indices
from kdgraph.spec import load_spec
from kdgraph.train import train

STEPS, TRAIN, TEST, BATCH, SEED = 6, 256, 64, 32, 3


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory, fmnist_subset):
    return fmnist_subset(tmp_path_factory.mktemp("fmnist"), TRAIN, TEST)


@pytest.mark.parametrize("variant", ["indistill", "all-at-once", "fitnet", "kd", "alone", "indistill-long",
                                     "all-at-once-long"])
def test_kdgraph_steps_equal_the_plain_pytorch_reference(variant, idx_root, script, initial_adapters, copy_params,
                                                         tmp_path):
    ref, fidelity = script("references/indistill"), script("fidelity")
    family = fidelity.FAMILIES["indistill"]
    steps = STEPS if not variant.endswith("-long") else 10  # the long stages take 8 epochs before the last stage
    overrides = ["teacher.weights=null", *family.kdgraph_overrides, *family.variants[variant].overrides,
                 *fidelity.epoch_overrides(family, variant, steps), "data.source=full", f"data.root={idx_root}",
                 f"data.batch_size={BATCH}", f"runtime.seed={SEED}", "train.max_steps_per_epoch=1",
                 f"eval.every={steps}", "runtime.precision=fp64", f"output={tmp_path / 'run'}"]
    spec = load_spec(family.spec, overrides)
    torch.manual_seed(0)
    teacher, student = ref.Teacher().eval().double(), ref.Student().double()
    with torch.no_grad():  # a teacher with BatchNorm statistics that are not the identity
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    models = {"teacher": copy.deepcopy(teacher)} if variant != "alone" else {}
    fitnet = torch.nn.Conv2d(32, 64, 1, bias=False).double() if variant == "fitnet" else torch.nn.Identity()
    if variant == "fitnet":
        copy_params(initial_adapters(spec, student=student, **models)[0], fitnet)

    result = train(spec, student=copy.deepcopy(student), quiet=True, overwrite=True, **models)
    ours = [row["loss/total"] for row in result.metrics]

    kept = ref.pruned_channels(teacher) if variant != "alone" else {}
    if variant in ("indistill", "all-at-once"):
        masks = json.loads((tmp_path / "run" / "prune_masks.json").read_text())
        assert {k.removeprefix("pair:"): v for k, v in masks.items()} == {k: v.tolist() for k, v in kept.items()}
    x, y = ref.load_split(idx_root, "train")
    optimizer, scheduler = ref.make_optimizer([*student.parameters(), *fitnet.parameters()], 0.05, steps)
    stages = ref.stages_for(variant, steps)
    theirs = []
    for step in range(steps):
        idx = epoch_indices(TRAIN, seed=SEED, epoch=step, shuffle=True)[:BATCH]
        theirs.append(ref.train_step(ref.active_at(stages, step), student, teacher, fitnet, kept, optimizer, scheduler,
                                     x[idx].double(), y[idx])["total"])
    assert len(ours) == steps
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{variant}: kdgraph {ours} vs {theirs}")
    assert len(set(np.round(theirs, 4))) == steps  # the loss moves: the steps really train

    x_test, y_test = ref.load_split(idx_root, "test")
    expected = ref.evaluate(student, x.double(), y, x_test.double(), y_test)
    assert result.metrics[-1]["val_top1"] == pytest.approx(expected["val_top1"], abs=1e-9)
    assert result.metrics[-1]["val_map"] == pytest.approx(expected["val_map"], abs=1e-6)

