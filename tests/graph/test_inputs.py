"""Each model sees the input it was trained for: the teacher's InputAdapter, the data normalised for the student,
the conversion kept under shared views and in the teacher cache."""

import pytest
import torch
from torch import nn

import kdgraph
from kdgraph.errors import KdgraphError
from kdgraph.graph.inputs import InputAdapter
from kdgraph.models.preprocess import Preprocessing
from kdgraph.plan import resolve_plan
from kdgraph.spec import Spec

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def net(k: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, k))


def spec(teacher_input=None, **data) -> Spec:
    return Spec.model_validate({
        "teacher": {"model": "live:teacher", **({"input": teacher_input} if teacher_input else {})},
        "student": {"model": "live:student", "input": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
        "data": {"dataset": "synthetic", "batch_size": 16, "synthetic": {"train_size": 64}, **data},
        "distill": {"logits": {}, "pairs": [{"student": "3", "teacher": "3"}]},
        "train": {"epochs": 1}, "runtime": {"device": "cpu"}})


def pixels(x: torch.Tensor) -> torch.Tensor:
    """The [0, 1] pixels a batch normalised with ImageNet's statistics stands for."""
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_teacher_expecting_half_receives_exactly_what_it_would_alone():
    torch.manual_seed(0)
    teacher, student = net().eval(), net()
    plan = resolve_plan(spec({"mean": [0.5] * 3, "std": [0.5] * 3}), student=student, teacher=teacher)
    assert plan.data.mean == tuple(IMAGENET_MEAN) and plan.data.std == tuple(IMAGENET_STD)  # normalised for the student
    x, _ = plan.data.train.get_batch(torch.arange(8))
    alone = (pixels(x) - 0.5) / 0.5  # what a pipeline built for the teacher alone would give it
    frozen = plan.graph.teachers["teacher"]
    torch.testing.assert_close(frozen.input(x), alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(frozen(x)["output"], teacher(alone), atol=1e-5, rtol=0)
    # without the conversion the teacher would read ImageNet-normalised pixels: clearly different
    assert (x - alone).abs().max() > 0.1


def test_teacher_at_twice_the_resolution_with_shared_views():
    torch.manual_seed(0)
    teacher, student = net().eval(), net()
    s = spec({"mean": [0.5] * 3, "std": [0.5] * 3, "size": 64}, augment="crop-flip", mix="mixup")
    plan = resolve_plan(s, student=student, teacher=teacher)
    assert plan.teacher_map.input_shape == (3, 64, 64) and plan.student_map.input_shape == (3, 32, 32)
    from kdgraph.train.trainer import Trainer

    seen = {}
    frozen = plan.graph.teachers["teacher"]
    hooks = [frozen.register_forward_pre_hook(lambda m, a: seen.setdefault("batch", a[0].clone())),
             frozen.module.register_forward_pre_hook(lambda m, a: seen.setdefault("converted", a[0].clone())),
             plan.graph.student.register_forward_pre_hook(lambda m, a: seen.setdefault("student", a[0].clone()))]
    trainer = Trainer(plan)
    trainer.enter_epoch(0)
    x, y, idx, host = next(iter(trainer.batches(0)))
    values = trainer.train_batch(x, y, idx, host)
    for hook in hooks:
        hook.remove()
    # shared views: the teacher is handed the student's augmented, mixed 32-px batch itself (not a second draw) ...
    assert torch.equal(seen["batch"], seen["student"]) and not torch.equal(seen["student"], x)
    # ... and reads it converted to its own 64-px input
    assert seen["converted"].shape[-2:] == (64, 64)
    torch.testing.assert_close(seen["converted"], frozen.input(seen["student"]))
    assert values is not None and torch.isfinite(values["total"])


def test_teacher_cache_holds_what_the_converted_input_gives():
    from kdgraph.train.teacher_cache import TeacherCache

    torch.manual_seed(0)
    teacher, student = net().eval(), net()
    s = spec({"mean": [0.5] * 3, "std": [0.5] * 3, "size": 48})
    plan = resolve_plan(s, student=student, teacher=teacher)
    cache = TeacherCache(s, plan.graph.teachers, plan.data.train, torch.device("cpu"))
    x, _ = plan.data.train.get_batch(torch.arange(4))
    alone = torch.nn.functional.interpolate((pixels(x) - 0.5) / 0.5, size=(48, 48), mode="bilinear",
                                            align_corners=False)
    torch.testing.assert_close(cache.lookup(torch.arange(4), torch.device("cpu"))["teacher"]["output"],
                               teacher(alone), atol=1e-5, rtol=0)


def test_adapter_identity_and_grey_to_rgb():
    same = InputAdapter((0.5,), (0.25,), (1, 8, 8), Preprocessing())
    assert same.identity and same.steps() == []
    grey = InputAdapter((0.5,), (0.25,), (1, 8, 8), Preprocessing(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4)))
    x = torch.rand(2, 1, 8, 8)
    out = grey(x)
    p = x * 0.25 + 0.5
    for c, (m, sd) in enumerate(((0.4, 0.2), (0.5, 0.3), (0.6, 0.4))):
        torch.testing.assert_close(out[:, c:c + 1], (p - m) / sd, atol=1e-6, rtol=0)
    assert grey.out_shape == (3, 8, 8) and grey.steps()[0] == "grey → 3 channels"


def test_student_input_size_must_agree_with_data_image_size():
    s = Spec.model_validate({"student": {"model": "live:student", "input": {"size": 64}},
                             "data": {"dataset": "synthetic", "image_size": 32}})
    with pytest.raises(KdgraphError, match="student.input.size 64 differs from data.image_size 32"):
        resolve_plan(s, student=net())


def test_student_input_size_sizes_the_data():
    s = Spec.model_validate({"student": {"model": "live:student", "input": {"size": 40}},
                             "data": {"dataset": "synthetic", "batch_size": 8}, "runtime": {"device": "cpu"}})
    assert resolve_plan(s, student=net()).data.input_shape == (3, 40, 40)


def test_timm_teacher_with_file_weights_and_other_statistics_is_a_warning(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", num_classes=10)
    save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
    s = Spec.model_validate({"teacher": {"model": "timm:resnet18", "kwargs": {"num_classes": 10},
                                         "weights": str(tmp_path / "t.safetensors")},
                             "student": {"model": "live:student"}, "distill": {"logits": {}},
                             "data": {"dataset": "synthetic", "batch_size": 8}, "runtime": {"device": "cpu"}})
    plan = resolve_plan(s, student=net())
    warning = next(w for w in plan.warnings if w.startswith("teacher.input"))
    assert "cannot tell how its inputs were normalised" in warning and "set teacher.input: {mean" in warning
    assert "(0.485, 0.456, 0.406)" in warning
    # given, the warning goes and the teacher is converted
    doc = s.model_dump(mode="json")
    doc["teacher"]["input"] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    s2 = Spec.model_validate(doc)
    plan = resolve_plan(s2, student=net())
    assert not any(w.startswith("teacher.input") for w in plan.warnings)
    assert plan.graph.inputs["teacher"].renormalise


def test_inspect_prints_the_conversion(tmp_path, capsys):
    import yaml
    from click.testing import CliRunner
    from kdgraph.cli.main import main

    doc = {"teacher": {"model": "kdgraph:fmnist_cnn_wide", "weights": "builtin",
                       "input": {"mean": [0.5], "std": [0.5], "size": 56}},
           "student": {"model": "kdgraph:fmnist_cnn"}, "distill": {"logits": {}},
           "data": {"source": "embedded"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    assert "input: teacher reads 1×56×56 (from spec over builtin weights): resize 28×28 → 56×56 bilinear → re-normalise mean" in out.output
    out = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    import json
    assert json.loads(out.output[out.output.index("{"):])["inputs"]["teachers"]["teacher"]["shape"] == [1, 56, 56]


def fmnist_plan(tmp_path=None, student_input=None, teacher=None, weights="builtin"):
    """The quickstart's models on the embedded Fashion-MNIST, the student's batch normalised with ``student_input``."""
    doc = {"teacher": {"model": "kdgraph:fmnist_resnet", "weights": weights},
           "student": {"model": "kdgraph:fmnist_cnn", **({"input": student_input} if student_input else {})},
           "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 64, "train_subset": 128,
                    "test_subset": 1000},
           "distill": {"logits": {}}, "runtime": {"device": "cpu"}}
    return resolve_plan(Spec.model_validate(doc), teacher=teacher)


def teacher_predictions(plan) -> tuple[torch.Tensor, float]:
    """The teacher's logits on the plan's test images (as the student's batch holds them) and its top-1."""
    x, y = plan.data.test.get_batch(torch.arange(len(plan.data.test)))
    with torch.no_grad():
        logits = plan.teacher_classifiers()["teacher"](x)
    return logits, (logits.argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("student_input", [{"mean": [0.5], "std": [0.5]}, {"mean": [0.1], "std": [0.9]}])
def test_no_student_input_changes_the_teachers_top1(student_input):
    """Issue #29: the student's ``input:`` normalises the batch for the student; the zoo teacher still reads what its
    builtin weights were trained with (the record beside them), so its logits and measured top-1 do not move."""
    logits, top1 = teacher_predictions(fmnist_plan())
    plan = fmnist_plan(student_input=student_input)
    assert plan.data.mean == tuple(student_input["mean"])  # the batch is the student's ...
    moved, moved_top1 = teacher_predictions(plan)
    torch.testing.assert_close(moved, logits, atol=1e-4, rtol=1e-4)  # ... the teacher reads it re-normalised
    assert moved_top1 == top1 and top1 > 0.85
    assert plan.graph.inputs["teacher"].steps()[0].startswith("re-normalise mean (" + f"{student_input['mean'][0]:.4g}")


def test_a_teacher_without_published_input_reads_the_data_sets_own_statistics(tmp_path):
    """No ``teacher.input`` and nothing published (a weights file; a module from Python): the fallback is the data
    set's own statistics, never the student's override."""
    import shutil

    from kdgraph.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    from kdgraph.models import build_model
    from kdgraph.models.weights import BUILTIN_DIR

    shutil.copy(BUILTIN_DIR / "fmnist_resnet.safetensors", tmp_path / "t.safetensors")
    logits, _ = teacher_predictions(fmnist_plan())
    half = {"mean": [0.5], "std": [0.5]}
    for plan in (fmnist_plan(student_input=half, weights=str(tmp_path / "t.safetensors")),
                 fmnist_plan(student_input=half, teacher=build_model("kdgraph:fmnist_resnet", weights="builtin"))):
        adapter = plan.graph.inputs["teacher"]
        assert adapter.mean == FASHION_MNIST_MEAN and adapter.std == FASHION_MNIST_STD
        assert adapter.source == "the data set's statistics"
        torch.testing.assert_close(teacher_predictions(plan)[0], logits, atol=1e-4, rtol=1e-4)
        assert not any(w.startswith("teacher.input") for w in plan.warnings)


def test_builtin_weights_publish_what_they_were_trained_with():
    """The zoo teachers were trained by specs/teachers/*.yaml on Fashion-MNIST at 28×28 normalised with the data set's
    own constants: the record beside each builtin file says so, as timm's ``pretrained_cfg`` does."""
    import yaml

    from kdgraph.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    from kdgraph.models.preprocess import published_preprocessing
    from kdgraph.models.weights import BUILTIN_DIR

    root = BUILTIN_DIR.parents[3]
    for name in ("fmnist_resnet", "fmnist_cnn_wide"):
        trained_by = yaml.safe_load((root / "specs" / "teachers" / f"{name}.yaml").read_text())
        assert "input" not in trained_by["student"] and trained_by["data"]["dataset"] == "fashion-mnist"
        published = published_preprocessing(f"kdgraph:{name}")
        assert published.mean == FASHION_MNIST_MEAN and published.std == FASHION_MNIST_STD
        assert published.size == (28, 28) and published.source == "builtin weights"
        assert published_preprocessing(f"kdgraph:{name}", {"num_classes": 3}) is None  # builtin fits default kwargs
    assert published_preprocessing("kdgraph:fmnist_cnn") is None  # no builtin weights, nothing published


def test_inspect_shows_the_teachers_renormalisation(tmp_path):
    import yaml
    from click.testing import CliRunner
    from kdgraph.cli.main import main

    doc = {"teacher": {"model": "kdgraph:fmnist_resnet", "weights": "builtin"},
           "student": {"model": "kdgraph:fmnist_cnn"}, "distill": {"logits": {}}, "data": {"source": "embedded"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(main, ["inspect", str(path), "--set", "student.input={mean: [0.5], std: [0.5]}"])
    assert out.exit_code == 0, out.output
    assert ("input: teacher reads 1×28×28 (from builtin weights): re-normalise mean (0.5) → (0.286), std (0.5) → "
            "(0.353)") in out.output
