"""resolve_plan's warnings: what resolves but is almost always a mistake, named by spec key and YAML line."""

import torch
from torch import nn

from kdgraph.models import create_model
from kdgraph.spec import load_spec, spec_from_dict
from kdgraph.plan import resolve_plan

SPEC = """\
name: warned
teacher: {model: "kdgraph:fmnist_resnet"}
student: {model: "kdgraph:fmnist_cnn", kwargs: {widths: [4, 8, 16]}}
data: {dataset: fashion-mnist, source: embedded, batch_size: 32, train_subset: 64, test_subset: 32}
distill:
  pairs:
    - {teacher: layer3, student: block3}
    - {teacher: layer3, student: pool}
"""


def resolved(tmp_path, text, *overrides):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return resolve_plan(load_spec(path, overrides))


def test_a_teacher_without_weights_and_an_upsampled_pair_are_warned_about(tmp_path):
    warnings = resolved(tmp_path, SPEC).warnings
    assert warnings == [
        "teacher.weights (line 2): kdgraph:fmnist_resnet has no weights, so the teacher is randomly initialised and "
        "teaches noise; set teacher.weights: builtin (the zoo's trained weights)",
        "distill.pairs[1] (line 8): pair:pool->layer3: the student's 1x1 map (one value per channel) is upsampled "
        "to the teacher's 7x7 grid, so most teacher positions are compared with interpolated values; pool both sides "
        "(pool: gap) or pair a student layer with a finer grid"]


def test_teachers_with_weights_or_pooled_pairs_are_not_warned_about(tmp_path):
    text = SPEC.replace('"kdgraph:fmnist_resnet"}', '"kdgraph:fmnist_resnet", weights: builtin}')
    assert resolved(tmp_path, text, "distill.pairs[1].pool=gap").warnings == []


def test_each_of_several_teachers_is_named_by_its_own_key(tmp_path):
    text = SPEC.replace('teacher: {model: "kdgraph:fmnist_resnet"}',
                        'teachers:\n  - {name: a, model: "kdgraph:fmnist_resnet", weights: builtin}\n'
                        '  - {name: b, model: "timm:resnet18", kwargs: {in_chans: 1, num_classes: 10}}')
    text = text.replace("- {teacher: layer3, student: block3}", "- {teacher: layer3, student: block3, teacher_model: a}")
    text = text.replace("- {teacher: layer3, student: pool}", "- {teacher: layer3, student: block3, teacher_model: b}")
    warnings = resolved(tmp_path, text).warnings
    assert len(warnings) == 1 and warnings[0].startswith("teachers[1].weights (line 4): timm:resnet18 has no weights")
    assert "pretrained" in warnings[0]


LIVE_DOC = {"student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
            "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 512,
                     "test_subset": 32},
            "distill": {"pairs": [{"teacher": "layer3", "student": "block3"}]}, "teacher": {"model": "live:teacher"}}


def test_self_distillation_and_trained_live_teachers_are_not_warned_about():
    live = create_model("kdgraph:fmnist_resnet", weights="builtin")
    assert resolve_plan(spec_from_dict(LIVE_DOC), teacher=live).warnings == []
    self_doc = dict(LIVE_DOC, teacher="self", distill={}, self_distill={"heads": ["block1", "block2"]})
    assert resolve_plan(spec_from_dict(self_doc)).warnings == []


def test_a_live_teacher_at_chance_is_warned_about():
    """Issue #29: kdgraph cannot know whether a module passed from Python is trained, but one that classifies the
    training images no better than chance teaches noise; the warning names the way to load trained weights."""
    torch.manual_seed(0)
    plan = resolve_plan(spec_from_dict(LIVE_DOC), teacher=create_model("kdgraph:fmnist_resnet"))
    assert len(plan.warnings) == 1, plan.warnings
    warning = plan.warnings[0]
    assert warning.startswith("teacher: the module passed from Python classifies 256 training images at ")
    assert "no better than chance" in warning and 'create_model("kdgraph:fmnist_resnet", weights="builtin")' in warning
    # the number it reports is the teacher's top-1 on those images, computed here a second way
    from kdgraph.data.loader import fetch
    from kdgraph.plan import CHANCE_SAMPLE

    n = len(plan.data.train)
    x, y = fetch(plan.data.train, torch.linspace(0, n - 1, CHANCE_SAMPLE).round().long())
    top1 = (plan.teachers["teacher"].eval()(x).argmax(1) == y).float().mean().item()
    assert f"at {top1:.1%} top-1" in warning


def test_a_teacher_the_user_trained_is_not_warned_about():
    """A module of the user's own, trained in a few steps on synthetic data, clears the bar: no false warning."""
    torch.manual_seed(0)
    doc = {"student": {"model": "live:student"}, "teacher": {"model": "live:teacher"},
           "data": {"dataset": "synthetic", "batch_size": 32, "synthetic": {"classes": 4, "channels": 1,
                                                                            "train_size": 256}, "image_size": 8},
           "distill": {"logits": {}}, "runtime": {"device": "cpu"}}
    spec = spec_from_dict(doc)
    data = resolve_plan(spec, student=nn.Sequential(nn.Flatten(), nn.Linear(64, 4)),
                        teacher=nn.Sequential(nn.Flatten(), nn.Linear(64, 4))).data
    x, y = data.train.get_batch(torch.arange(len(data.train)))[:2]
    mine = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(mine.parameters(), lr=0.1)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(mine(x), y).backward()
        optimizer.step()
    assert (mine(x).argmax(1) == y).float().mean() > 0.6
    plan = resolve_plan(spec, student=nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), teacher=mine)
    assert plan.warnings == []


def test_a_source_that_cannot_be_indexed_is_refused_with_its_key(tmp_path, monkeypatch):
    import dataclasses

    import pytest

    import kdgraph.plan
    from kdgraph.errors import KdgraphError

    build_data = kdgraph.plan.build_data

    def streaming(*args, **kwargs):
        bundle = build_data(*args, **kwargs)
        return dataclasses.replace(bundle, provides=dataclasses.replace(bundle.provides, indexable=False))

    monkeypatch.setattr(kdgraph.plan, "build_data", streaming)
    with pytest.raises(KdgraphError, match="index by position") as err:
        resolved(tmp_path, SPEC)
    assert (err.value.key, err.value.line) == ("data.dataset", 4)


def test_the_plan_carries_graph_pairs_and_maps(tmp_path):
    plan = resolved(tmp_path, SPEC)
    assert [r.label for r in plan.pairs] == ["pair:block3->layer3", "pair:pool->layer3"]
    assert plan.graph.student_adapters[plan.pairs[0].key] is plan.pairs[0].adapters.student
    assert plan.teacher_map is plan.teacher_maps["teacher"] and plan.student_map.logit_count == 10


def test_only_outputs_read_as_class_scores_must_give_one_logit_per_class():
    """Issue #29: the student's width is checked against the data's classes wherever its output is read as class
    scores (CE on the labels, the logits term, top-1 evaluation); SimReg-style runs (no CE, no logits term, k-NN /
    linear-probe evaluation) read only an embedding, so their output may have any width."""
    from kdgraph.errors import KdgraphError
    import pytest

    doc = {"teacher": {"model": "kdgraph:fmnist_resnet", "weights": "builtin"},
           "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16], "num_classes": 16}},
           "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
                    "test_subset": 32},
           "distill": {"pairs": [{"teacher": "fc:input", "student": "fc:input", "projector": "linear",
                                  "loss": "cosine"}]},
           "train": {"ce_weight": 0}, "eval": {"metrics": ["knn", "linear_probe"]}}
    plan = resolve_plan(spec_from_dict(doc))
    assert plan.student_map.logit_count == 16 and plan.data.num_classes == 10
    for change, words in (({"eval": {"metrics": ["top1", "knn"]}}, "eval.metrics scores their top-1"),
                          ({"train": {"ce_weight": 1.0}}, "train.ce_weight > 0 trains them on the labels")):
        with pytest.raises(KdgraphError, match="kdgraph:fmnist_cnn gives 16 logits but the data has 10 classes") as err:
            resolve_plan(spec_from_dict({**doc, **change}))
        assert err.value.key == "student" and words in str(err.value) and "num_classes: 10 in student.kwargs" in \
            str(err.value)


def test_a_live_student_of_the_wrong_width_is_told_to_change_the_module():
    from kdgraph.errors import KdgraphError
    import pytest

    doc = {"student": {"model": "live:student"}, "data": {"dataset": "synthetic", "batch_size": 16,
                                                          "synthetic": {"classes": 3, "channels": 1, "train_size": 64}}}
    with pytest.raises(KdgraphError, match="live:student gives 5 logits but the data has 3 classes.*pass a module "
                                           "with 3 outputs"):
        resolve_plan(spec_from_dict(doc), student=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                               nn.Linear(1, 5)))
