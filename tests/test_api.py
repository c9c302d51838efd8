"""kdgraph.distill: live modules, several teachers as a dict, and the errors a Python caller gets."""

import pytest
from torch import nn

import kdgraph
from kdgraph.errors import KdgraphError, SpecError
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict

DATA = {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64, "test_subset": 32}


def teacher():
    return create_model("kdgraph:fmnist_resnet", {"widths": [8, 16, 16], "blocks": [1, 1, 1]})


def student():
    return create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 16]})


def doc(**changes):
    base = {"data": dict(DATA), "distill": {"logits": {"temperature": 4.0}}, "train": {"epochs": 1},
            "runtime": {"threads": 1}}
    return {**base, **changes}


def test_a_teacher_dict_naming_a_teacher_the_spec_does_not_have_is_refused():
    spec = doc(teachers=[{"name": "big", "model": "live:big"}])
    with pytest.raises(SpecError, match=r"no teacher named 'bigg'.*big"):
        kdgraph.distill(spec, teacher={"bigg": teacher()}, student=student())


def test_a_teacher_module_for_a_spec_without_teachers_is_refused():
    spec = spec_from_dict({"student": {"model": "live:student"}, **doc(distill={})})
    with pytest.raises(SpecError, match="the spec has no teacher"):
        kdgraph.distill(spec, teacher=teacher(), student=student())


@pytest.mark.parametrize("kwargs, words", [
    ({"teacher": 42}, "teacher must be an nn.Module or a dict of them, not int"),
    ({"teacher": {"a": "kdgraph:fmnist_resnet"}}, r"teacher\['a'\] must be an nn.Module, not str"),
    ({"student": "kdgraph:fmnist_cnn"}, "student must be an nn.Module, not str"),
])
def test_live_models_that_are_not_modules_are_named(kwargs, words):
    kwargs = {"teacher": teacher(), "student": student(), **kwargs}
    with pytest.raises(KdgraphError, match=words):
        kdgraph.distill(doc(), **kwargs)


def test_two_live_teachers_as_a_dict():
    spec = doc(distill={"pairs": [{"teacher_model": "a", "teacher": "layer3", "student": "block3"},
                                  {"teacher_model": "b", "teacher": "layer2", "student": "block2"}]})
    result = kdgraph.distill(spec, teacher={"a": teacher(), "b": teacher()}, student=student())
    assert {"loss/pair:block3->a.layer3", "loss/pair:block2->b.layer2"} <= set(result.metrics[-1])
    assert isinstance(result.student, nn.Module) and result.run_dir is None

