"""Losses named in a spec are checked against their records when the spec loads."""

import pytest

from kdgraph.errors import SpecError
from kdgraph.spec import spec_from_dict


def doc(logits=None, loss="mse"):
    return {"teacher": {"model": "kdgraph:fmnist_resnet"}, "student": {"model": "kdgraph:fmnist_cnn"},
            "distill": {**({"logits": logits} if logits is not None else {}),
                        "pairs": [{"teacher": "layer3", "student": "block3", "loss": loss}]}}


def test_a_logit_loss_takes_its_parameters_but_not_the_temperature():
    spec = spec_from_dict(doc({"loss": {"name": "kl", "t_squared": False}, "temperature": 2.0}))
    assert spec.distill.logits.loss.name == "kl" and spec.distill.logits.loss.params == {"t_squared": False}
    with pytest.raises(SpecError, match=r"distill.logits.loss: loss 'kl': temperature is set by its own key"):
        spec_from_dict(doc({"loss": {"name": "kl", "temperature": 2.0}}))
    with pytest.raises(SpecError, match=r"distill.pairs\[0\].loss: unknown feature loss 'kl'"):
        spec_from_dict(doc(loss="kl"))  # a logit loss is no pair loss


def test_dumps_keep_the_forms_older_run_directories_hold():
    spec = spec_from_dict(doc({"loss": "ce_soft"}))
    dumped = spec.model_dump(mode="json")["distill"]
    assert dumped["logits"]["loss"] == "ce_soft" and dumped["pairs"][0]["loss"] == {"name": "mse"}
    assert spec_from_dict(spec.model_dump(mode="json")) == spec


def test_a_required_loss_parameter_must_be_given(monkeypatch):
    from kdgraph.losses import registry

    monkeypatch.setattr(registry, "_RECORDS", dict(registry._RECORDS))
    registry.register_loss("needs_beta", kind="feature")(lambda s, t, *, beta: (s - t).pow(2).mean() * beta)
    with pytest.raises(SpecError, match="loss 'needs_beta' needs beta"):
        spec_from_dict(doc(loss="needs_beta"))
    assert spec_from_dict(doc(loss={"name": "needs_beta", "beta": 2})).distill.pairs[0].loss.params == {"beta": 2}


def pair_doc(pair, **extra):
    return {"teacher": {"model": "kdgraph:fmnist_resnet"}, "student": {"model": "kdgraph:fmnist_cnn"},
            "distill": {"pairs": [pair]}, **extra}


def test_a_loss_over_several_taps_takes_lists_of_layers_and_nothing_else():
    spec = spec_from_dict(pair_doc({"teacher": ["layer1", "layer2"], "student": ["block1", "block2"], "loss": "fsp"}))
    pair = spec.distill.pairs[0]
    assert pair.student_taps == ["block1", "block2"] and pair.label == "pair:block1+block2->layer1+layer2"
    with pytest.raises(SpecError, match=r"distill.pairs\[0\]: loss 'fsp' reads 2 layers per model: give `student`"):
        spec_from_dict(pair_doc({"teacher": "layer1", "student": "block1", "loss": "fsp"}))
    with pytest.raises(SpecError, match=r"loss 'fsp' needs 2 each; got 3 student and 3 teacher layers"):
        spec_from_dict(pair_doc({"teacher": ["layer1", "layer2", "layer3"], "student": ["block1", "block2", "block3"],
                                 "loss": "fsp"}))
    with pytest.raises(SpecError, match=r"loss 'mse' compares one layer per model"):
        spec_from_dict(pair_doc({"teacher": ["layer1", "layer2"], "student": ["block1", "block2"]}))
    many = {"teacher": ["layer1", "layer2", "flatten"], "student": ["block1", "block2", "flatten"], "loss": "reviewkd"}
    assert spec_from_dict(pair_doc(many)).distill.pairs[0].teacher_taps == ["layer1", "layer2", "flatten"]
    with pytest.raises(SpecError, match="as many teacher layers as student layers; got 2 student and 3 teacher"):
        spec_from_dict(pair_doc({**many, "student": ["block1", "block2"]}))


def test_catalogue_losses_check_their_parameters_and_the_module_parameters():
    assert spec_from_dict(pair_doc({"teacher": "flatten", "student": "flatten",
                                    "loss": {"name": "crd", "num_negatives": 64, "eps": 1e-6}}))
    with pytest.raises(SpecError, match=r"loss 'crd' has no parameter 'negatives' \(valid: eps, dim, num_negatives"):
        spec_from_dict(pair_doc({"teacher": "flatten", "student": "flatten",
                                 "loss": {"name": "crd", "negatives": 64}}))
    spec = spec_from_dict(doc({"loss": {"name": "dkd", "beta": 2.0}, "warmup_epochs": 20, "standardise": True}))
    assert spec.distill.logits.warmup_epochs == 20 and spec.distill.logits.standardise
    with pytest.raises(SpecError, match=r"distill.logits.loss: loss 'dkd' has no parameter 'target'"):
        spec_from_dict(doc({"loss": {"name": "dkd", "target": 1}}))  # a run input is no parameter


def test_stage_objectives_name_pairs_whose_loss_has_a_module():
    pair = {"name": "factor", "teacher": "layer3", "student": "block3", "loss": "ft"}
    stages = [{"epochs": 1, "objectives": ["factor"], "ce": False}, {"epochs": 2, "pairs": ["factor"]}]
    spec = spec_from_dict(pair_doc(pair, train={"epochs": 3, "stages": stages}))
    assert spec.train.stages[0].objectives == ["factor"] and not spec.train.stages[0].ce
    with pytest.raises(SpecError, match=r"objectives names 'facter', which is no pair; did you mean 'factor'"):
        spec_from_dict(pair_doc(pair, train={"epochs": 1, "stages": [{"epochs": 1, "objectives": ["facter"]}]}))
    with pytest.raises(SpecError, match=r"objectives names 'factor', whose loss 'mse' has no module"):
        spec_from_dict(pair_doc({**pair, "loss": "mse"}, train={"epochs": 1,
                                                                "stages": [{"epochs": 1, "objectives": ["factor"]}]}))
