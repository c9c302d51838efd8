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
