"""benchmarks/accuracy.py: every recipe's variants are valid specs; a logged run is reused, not trained again."""

import json

import pytest

from kdgraph.spec import load_spec


@pytest.mark.parametrize("recipe", ["zoo", "zoo-diagnostics", "projector", "self_distillation"])
def test_every_variant_loads_with_the_epoch_budget(recipe, script):
    accuracy = script("accuracy")
    for label, path, overrides in accuracy.RECIPES[recipe]:
        extra = accuracy.epoch_overrides(path, overrides, 2)
        spec = load_spec(accuracy.ROOT / path, [*overrides, *extra])
        last = spec.train.stages[-1].epochs if spec.train.stages else spec.train.epochs
        assert last == 2, label  # the common budget; a pre-stage comes on top of it


def test_diagnostics_change_one_thing(script):
    accuracy = script("accuracy")
    nst = dict((label, overrides) for label, _, overrides in accuracy.RECIPES["zoo-diagnostics"])["NST, weight / 10"]
    loaded = load_spec(accuracy.ROOT / "specs/zoo/nst.yaml", nst)
    original = load_spec(accuracy.ROOT / "specs/zoo/nst.yaml")
    assert [p.weight for p in loaded.distill.pairs] == [p.weight / 10 for p in original.distill.pairs]


def test_a_logged_run_is_reused(script, tmp_path, monkeypatch):
    accuracy = script("accuracy")
    log = tmp_path / "runs.jsonl"
    key = {"label": "student alone", "seed": 1, "epochs": 2, "extra": ["runtime.threads=1"]}
    log.write_text(json.dumps({**key, "data": "some data", "metrics": {"val_top1": 0.5}}) + "\n")

    def no_training(*args, **kwargs):
        raise AssertionError("a logged run was trained again")

    monkeypatch.setattr(accuracy, "train", no_training)
    rows, data = accuracy.run("student alone", "specs/zoo/kd.yaml", [], [1], 2, ["runtime.threads=1"], log)
    assert rows == [{"val_top1": 0.5}] and data == "some data"
    with pytest.raises(AssertionError, match="trained again"):  # another seed is not in the log
        accuracy.run("student alone", "specs/zoo/kd.yaml", [], [2], 2, ["runtime.threads=1"], log)
