"""teacher.cache: auto caches only where it is exact, and an exact cache trains the same student."""

import json

import pytest
import torch

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.train import teacher_cache
from kdgraph.plan import resolve_plan
from kdgraph.train.teacher_cache import teachers_to_cache

@pytest.fixture
def spec(tiny_doc):
    """The tiny spec (tests/train/conftest.py), one thread, with teacher keys (cache) and data keys changed."""

    def make(**teacher):
        doc = json.loads(json.dumps(tiny_doc))
        doc["runtime"]["threads"] = 1
        doc["data"].update(teacher.pop("data", {}))
        doc["teacher"].update(teacher)
        return spec_from_dict(doc)

    return make


def chosen(s, data=None):
    plan = resolve_plan(s)
    return list(teachers_to_cache(s, plan.graph.teachers, plan.data if data is None else data))


def test_auto_caches_only_when_exact_and_small(monkeypatch, spec):
    assert chosen(spec()) == ["teacher"]  # default: auto, no augmentation, a few hundred KB
    assert chosen(spec(data={"augment": "crop-flip"})) == []
    assert chosen(spec(data={"mix": "mixup"})) == []
    assert chosen(spec(cache="none")) == []
    assert chosen(spec(cache="outputs", data={"augment": "crop-flip"})) == ["teacher"]  # asked for: the ablation
    monkeypatch.setattr(teacher_cache, "AUTO_LIMIT", 1000)
    assert chosen(spec()) == []


def test_auto_does_not_cache_a_data_set_with_per_sample_random_transforms(spec, tmp_path):
    # imagefolder draws a random resized crop and flip per image: a cache would freeze one crop per image
    # while the student sees a new one every epoch, so `auto` must not call that exact
    from PIL import Image

    from kdgraph.data import build_datasets

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (9, 7), (40 if c == "a" else 200, 0, 0)).save(tmp_path / split / c / "0.png")
    folder = build_datasets("imagefolder", tmp_path, image_size=8)
    assert not teacher_cache.cache_is_exact(spec(), folder)
    assert chosen(spec(), folder) == []
    assert chosen(spec(cache="outputs"), folder) == ["teacher"]  # asked for: the ablation
    assert teacher_cache.cache_is_exact(spec(), resolve_plan(spec()).data)


def test_exact_cache_trains_the_same_student_without_teacher_forwards(monkeypatch, spec):
    from kdgraph.graph.teacher import FrozenTeacher

    calls = []
    forward = FrozenTeacher.forward
    monkeypatch.setattr(FrozenTeacher, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    cached = train(spec(), write=False, quiet=True)
    evaluation = 2 * 64  # the 64 test images twice: the teacher's top-1, then its logits for val_agree / val_kl
    assert sum(calls) == 192 + evaluation  # one pass over the training set; none in the steps
    calls.clear()
    plain = train(spec(cache="none"), write=False, quiet=True)
    assert sum(calls) == 2 * 6 * 32 + evaluation  # a forward in every step
    for (name, a), b in zip(cached.student.state_dict().items(), plain.student.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert [r["val_top1"] for r in cached.metrics] == [r["val_top1"] for r in plain.metrics]


def test_a_cache_too_big_for_memory_is_refused_with_its_key(monkeypatch, spec):
    from kdgraph.errors import SpecError

    monkeypatch.setattr(teacher_cache, "HOST_LIMIT", 1000)
    with pytest.raises(SpecError, match="would take .* GiB .*set cache: none") as err:
        train(spec(cache="outputs"), write=False, quiet=True)
    assert err.value.key == "teacher.cache"



def test_exact_cache_in_float64_trains_the_same_student(spec):
    """``runtime.precision: fp64`` (checking against a reference): the size probe and the cache feed the float64
    teacher float64 images, and the cached run is the uncached one to rounding error."""
    s = spec()
    s.runtime.precision, s.train.epochs = "fp64", 1
    cached = train(s, write=False, quiet=True).metrics[-1]["loss/total"]
    s.teacher.cache = "none"
    assert cached == pytest.approx(train(s, write=False, quiet=True).metrics[-1]["loss/total"], rel=0, abs=1e-12)


def test_fixed_teacher_in_float64(spec):
    s = spec(cache="outputs", data={"augment": "crop-flip"})
    s.runtime.precision, s.train.epochs = "fp64", 1
    assert torch.isfinite(torch.tensor(train(s, write=False, quiet=True).metrics[-1]["loss/total"]))
