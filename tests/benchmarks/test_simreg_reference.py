"""Step by step, kdgraph's SimReg equals the independent loop of benchmarks/references/simreg.py.

The shipped spec (specs/methods/simreg_two_teachers.yaml) and every variant of benchmarks/fidelity.py's ``simreg``
family (head and teacher ablations, + CE, the student alone) on 256 images written as idx files: the same initial
student and teachers (live modules), the heads' initial weights copied from the ones kdgraph builds, kdgraph's own
batch order, crop boxes and flips (``ViewMaker.draw``: per image, a function of (seed, epoch, image) alone)
replayed. Each kdgraph epoch is one step, in float64; every step's loss must agree within 1e-5, and so must the
final k-NN and linear-probe accuracies.

The crops: kdgraph crops the float32 batch before converting it to float64, and float32's rounding of the sampling
coordinates (1e-7) alone grows to 4e-5 in five SGD steps at lr 0.05 with the wide teacher. So the reference's own
crop is checked against kdgraph's in float64 (to 1e-12), and the steps are replayed on the same float32 crops.
"""

import copy

import numpy as np
import pytest
import torch

from kdgraph.data import resized_crop_flip
from kdgraph.data.loader import epoch_indices
from kdgraph.spec import load_spec
from kdgraph.train import train

STEPS, TRAIN, TEST, BATCH, SEED = 5, 256, 128, 32, 3


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory, fmnist_subset):
    return fmnist_subset(tmp_path_factory.mktemp("fmnist"), TRAIN, TEST)


def models(ref):
    torch.manual_seed(0)
    teachers = {"resnet": ref.ResNet(), "cnn_wide": ref.CNN((48, 96, 96))}
    with torch.no_grad():  # teachers with BatchNorm statistics that are not the identity
        for m in (m for t in teachers.values() for m in t.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    return {k: t.eval().double() for k, t in teachers.items()}, ref.CNN().double()


@pytest.mark.parametrize("variant", ["simreg", "simreg-ce", "mlp-shallow", "linear", "resnet-only", "wide-only",
                                     "alone", "simreg-wide-head", "simreg-ce-wide-head", "mlp-shallow-wide-head",
                                     "resnet-only-wide-head", "wide-only-wide-head"])
def test_kdgraph_steps_equal_the_plain_pytorch_reference(variant, idx_root, script, initial_adapters, copy_params,
                                                         kdgraph_views, tmp_path):
    ref, fidelity = script("references/simreg"), script("fidelity")
    family = fidelity.FAMILIES["simreg"]
    overrides = [*family.variants[variant].overrides, f"data.root={idx_root}", "data.source=full",
                 f"data.batch_size={BATCH}", f"runtime.seed={SEED}", f"train.epochs={STEPS}",
                 "train.max_steps_per_epoch=1", f"eval.every={STEPS}", "runtime.precision=fp64",
                 f"output={tmp_path / 'run'}"]
    spec = load_spec(family.spec, overrides)
    teachers, student = models(ref)
    used = {name: teachers[name] for name in spec.teacher_specs}
    heads = ref.make_heads(variant).double()
    if used:
        built = initial_adapters(spec, student=student, teacher=used)
        for i, pair in enumerate(spec.distill.pairs):  # kdgraph's pair i is the reference's head of that teacher
            copy_params(built[i], heads["resnet" if pair.teacher_model == "resnet" else "wide"])

    result = train(spec, student=copy.deepcopy(student), teacher=copy.deepcopy(used) or None, write=False, quiet=True)
    ours = [row["loss/total"] for row in result.metrics]

    x, y = ref.load_split(idx_root, "train")  # normalised float32, as kdgraph keeps it
    by_ref_name = {"resnet": teachers["resnet"], "wide": teachers["cnn_wide"]}
    optimizer, scheduler = ref.make_optimizer([*student.parameters(), *heads.parameters()], 0.05, STEPS)
    views = kdgraph_views(spec, TRAIN)  # kdgraph's crops: per image, a function of (seed, epoch, image)
    theirs = []
    for step in range(STEPS):
        idx = epoch_indices(TRAIN, seed=SEED, epoch=step, shuffle=True)[:BATCH]
        crop = views.draw(idx, view=step).crop
        boxes, flips = crop[:, :4], crop[:, 4] > 0.5
        torch.testing.assert_close(ref.resized_crop(x[idx].double(), boxes, flips),
                                   resized_crop_flip(x[idx].double(), boxes, flips), rtol=0, atol=1e-12)
        x_s = resized_crop_flip(x[idx], boxes, flips).double()  # float32, as kdgraph crops
        theirs.append(ref.train_step(variant, student, heads, by_ref_name, optimizer, scheduler, x_s, y[idx])["total"])
    assert len(ours) == STEPS
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{variant}: kdgraph {ours} vs {theirs}")
    assert len(set(np.round(theirs, 4))) == STEPS  # the loss moves: the steps really train

    x_test, y_test = ref.load_split(idx_root, "test")
    accuracies = ref.evaluate(student, x.double(), y, x_test.double(), y_test)
    for key in ("val_knn", "val_linear_probe"):
        assert result.metrics[-1][key] == pytest.approx(accuracies[key], abs=1.5 / TEST), key  # one image at most
