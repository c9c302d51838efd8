"""Spec keys of the method recipes: several named teachers, teacher_model references, eval, mix, views, cache."""

import pytest

from kdgraph.errors import SpecError
from kdgraph.spec import spec_from_dict
from kdgraph.spec.load import _read_yaml

TWO = """\
teachers:
  - {name: resnet, model: "kdgraph:fmnist_resnet"}
  - {name: wide, model: "kdgraph:fmnist_cnn_wide", cache: outputs}
student: {model: "kdgraph:fmnist_cnn"}
distill:
  pairs:
    - {teacher_model: resnet, teacher: "fc:input", student: "fc:input", loss: cosine}
    - {teacher_model: wide, teacher: "fc:input", student: "fc:input", loss: cosine}
"""


def load(text):
    data, index = _read_yaml(text, "spec.yaml")
    return spec_from_dict(data, index, "spec.yaml")


def test_named_teachers_and_labels():
    spec = load(TWO)
    assert list(spec.teacher_specs) == ["resnet", "wide"]
    assert spec.teacher_specs["wide"].cache == "outputs"
    assert [p.label for p in spec.distill.pairs] == ["pair:fc:input->resnet.fc:input", "pair:fc:input->wide.fc:input"]
    assert spec.external_teacher.name == "resnet"
    assert spec.teacher_key("wide") == ("teachers[1]", ("teachers", 1))


def test_single_teacher_is_named_teacher():
    spec = load('teacher: {model: "kdgraph:fmnist_resnet"}\nstudent: {model: "kdgraph:fmnist_cnn"}\n'
                "distill: {logits: {}}\n")
    assert list(spec.teacher_specs) == ["teacher"] and spec.teacher_specs["teacher"].cache == "auto"


@pytest.mark.parametrize("text, match, line", [
    (TWO.replace("teacher_model: resnet, ", ""), r"distill.pairs\[0\] needs `teacher_model:`.*resnet, wide", None),
    (TWO.replace("teacher_model: wide", "teacher_model: wid"), r"'wid' is no teacher; did you mean 'wide'", None),
    (TWO.replace("{name: wide, ", "{"), r"teachers\[1\] needs a `name:`", None),
    (TWO.replace("name: wide", "name: resnet").replace("teacher_model: wide", "teacher_model: resnet"),
     "used twice", None),
    ('teacher: {model: "kdgraph:fmnist_resnet"}\n' + TWO, "either `teacher` or `teachers`", None),
    (TWO + "eval: [knn, knn]\n", "name one metric twice", 9),
    (TWO + "eval: [top5]\n", "top5", 9),
    (TWO + "data: {mix: mixdown}\n", "mixdown", 9),
    (TWO + "data: {crop_scale: [0.8, 0.2]}\n", "low <= high", 9),
    (TWO + "data: {views: both}\n", "both", 9),
    (TWO.replace("cache: outputs", "cache: logits"), "logits", 3),
])
def test_bad_recipe_keys(text, match, line):
    with pytest.raises(SpecError, match=match) as info:
        load(text)
    if line is not None:
        assert info.value.line == line


def test_eval_list_and_mix_shorthands():
    spec = load(TWO + "eval: [knn, linear_probe]\ndata: {mix: cutmix, augment: resized-crop-flip}\n")
    assert spec.eval.metrics == ["knn", "linear_probe"] and spec.eval.knn_k == 20
    assert spec.data.mix.name == "cutmix" and spec.data.mix.alpha == 1.0
    assert spec.data.views == "shared" and spec.output.checkpoint_epochs == 1
