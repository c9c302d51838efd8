"""benchmarks/fidelity.py: every family's variants are valid specs and reference variants; the table and the plot."""

import pytest

from kdgraph.spec import load_spec

FAMILY_NAMES = ["fmnist_kd", "projector", "self_distillation", "function_matching", "simreg", "indistill"]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_variant_is_a_spec_and_a_reference_variant(name, script):
    fidelity = script("fidelity")
    family = fidelity.FAMILIES[name]
    reference = script(f"references/{family.script.removesuffix('.py')}")
    alone = next(iter(family.variants))
    assert alone == "alone"  # the gains are measured against the first variant
    for variant, spec in family.variants.items():
        assert spec.reference[0] in reference.VARIANTS, variant
        for epochs in (family.default_epochs, family.default_epochs + 3):  # the last stage takes the difference
            overrides = [*family.kdgraph_overrides, *spec.overrides, *fidelity.epoch_overrides(family, variant, epochs)]
            loaded = load_spec(family.spec, overrides)
            assert loaded.train.epochs == epochs
            assert (loaded.teacher is None and not loaded.teachers) == (variant == "alone")
    assert set(fidelity.FAMILIES) == set(FAMILY_NAMES)


@pytest.mark.parametrize("name", ["indistill", "simreg"])
def test_a_reference_on_the_embedded_subset_sees_kdgraphs_images(name, script):
    """Both sides of a family run on the embedded subset read the same images, in the same order, normalised alike
    (the reference from kdgraph's .npz with its own reader)."""
    import torch

    from kdgraph.plan import resolve_plan

    family = script("fidelity").FAMILIES[name]
    assert "embedded" in family.reference_args and "data.source=embedded" in family.kdgraph_overrides
    reference = script(f"references/{family.script.removesuffix('.py')}")
    data = resolve_plan(load_spec(family.spec, [*family.kdgraph_overrides, *family.variants["alone"].overrides])).data
    for split, dataset in (("train", data.train), ("test", data.test)):
        x, y = reference.load_split(None, split, "embedded")
        assert len(dataset) == len(y) == {"train": 12000, "test": 2000}[split]
        for i in (0, 1, len(y) // 2, len(y) - 1):
            image, label = dataset[i]
            assert label == int(y[i])
            torch.testing.assert_close(image, x[i], atol=1e-6, rtol=0)


def _rows(family, variant, side, values, metric="val_top1"):
    return [{"family": family, "variant": variant, "side": side, "seed": seed, "epochs": 5, "metrics": {metric: v},
             "curve": [{"epoch": 1, metric: v - 0.1}, {"epoch": 5, metric: v}]} for seed, v in enumerate(values)]


def test_table_compares_the_sides_and_the_gain_over_the_student_alone(script, tmp_path):
    fidelity = script("fidelity")
    rows = (_rows("fmnist_kd", "alone", "reference", [0.80, 0.81, 0.82])
            + _rows("fmnist_kd", "alone", "kdgraph", [0.805, 0.815, 0.825])
            + _rows("fmnist_kd", "kd", "reference", [0.85, 0.86, 0.87])
            + _rows("fmnist_kd", "kd", "kdgraph", [0.90, 0.901, 0.902])
            + _rows("fmnist_kd", "fitnet", "reference", [0.80, 0.83, 0.86]))  # kdgraph's side missing: no row
    lines = fidelity.table(rows, "fmnist_kd", [0, 1, 2], 5).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| student alone | top1 | 81.00 ± 1.00 | 81.50 ± 1.00 | +0.50 | yes |  |  |")
    # kd: the sides differ by 4.1 points, more than 2 std (2 x 1.00); both beat the student alone by > 2 std
    assert lines[3] == ("| KD: 0.1·CE + 0.9·T²·KL, T = 4 | top1 | 86.00 ± 1.00 | 90.10 ± 0.10 | +4.10 | **no** | "
                        "+5.00 / +8.60 | yes / yes |")
    # one seed: the values alone, and no verdicts (one run has no spread to judge a difference by)
    one = fidelity.table(rows, "fmnist_kd", [0], 5).splitlines()
    assert one[3] == "| KD: 0.1·CE + 0.9·T²·KL, T = 4 | top1 | 85.00 | 90.00 | +5.00 | – | +5.00 / +9.50 | – / – |"
    pytest.importorskip("matplotlib")
    fidelity.plot(rows, "fmnist_kd", [0, 1, 2], 5, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
