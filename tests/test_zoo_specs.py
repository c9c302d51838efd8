"""specs/zoo/: one runnable spec per method of the catalogue on the zoo teacher/student pair; `kdgraph validate`
passes on each, each cites its paper, and every registered loss (or option) of the catalogue has one."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdgraph.cli.main import main
from kdgraph.losses import losses
from kdgraph.spec import load_spec

ZOO = Path(__file__).resolve().parents[1] / "specs" / "zoo"
SPECS = sorted(ZOO.glob("*.yaml"))
BUILT_IN_BEFORE = {"mse", "l1", "cosine", "logsum", "logsum_corr", "pkt", "pkt_combined", "ce_soft"}  # not methods
DENSE = {"cwd", "pkd", "fgd", "pixel_kd"}  # detection / segmentation losses: their specs come with the dense zoo (#31)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_kdgraph_validate_passes(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text().splitlines()
    assert text[1].startswith("# ") and any(year in " ".join(text[1:4]) for year in ("201", "202")), \
        "the header cites the paper"
    spec = load_spec(path)
    assert spec.name == f"zoo-{path.stem}" and spec.output.dir == f"runs/zoo/{path.stem}"
    assert spec.student.model == "kdgraph:fmnist_cnn" and spec.teacher.model == "kdgraph:fmnist_resnet"
    assert spec.teacher.weights == "builtin" and spec.data.batch_size == 128


def test_every_method_of_the_catalogue_has_a_zoo_spec():
    used = set()
    for path in SPECS:
        spec = load_spec(path)
        used |= {pair.loss.name for pair in spec.distill.pairs}
        if spec.distill.logits is not None:
            used.add(spec.distill.logits.loss.name)
            used |= {"standardise"} if spec.distill.logits.standardise else set()
    methods = {r.name for r in losses()} - BUILT_IN_BEFORE - DENSE
    assert methods | {"standardise"} <= used


TINY = ["data.source=embedded", "data.train_subset=96", "data.test_subset=32", "data.batch_size=32",
        "train.max_steps_per_epoch=2", "runtime.threads=1"]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_each_zoo_spec_trains_a_few_steps(path):
    from kdgraph.train import train

    extra = ["distill.pairs[0].loss.num_negatives=64"] if path.stem == "crd" else []  # the bank is 96 images here
    result = train(load_spec(path, [*TINY, *extra]), write=False, quiet=True)
    spec = result.plan.spec
    assert len(result.metrics) == spec.train.epochs
    assert all(value == value for row in result.metrics for key, value in row.items() if key.startswith("loss/"))
