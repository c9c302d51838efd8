"""Function matching's views: shared views give teachers the student's exact (augmented, mixed) batch."""

import torch
import torch.nn.functional as F

from kdgraph.data import mixup, random_resized_crop_flip, sample_mix_ratio
from kdgraph.spec.schema import DataSpec
from kdgraph.train.views import make_views


def _x():
    return torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 5])


def test_shared_views_mix_once_and_soft_targets():
    x, y = _x()
    data = DataSpec(augment="resized-crop-flip", mix={"name": "mixup", "alpha": 1.0})
    views = make_views(x, y, data, 6, torch.Generator().manual_seed(3), two_views=True)
    assert views.teacher is None  # the graph feeds the student's tensor to every teacher
    # the same draws, replayed by hand: augmentation, then a ~ Beta(1, 1), max(a, 1 - a), roll by one
    g = torch.Generator().manual_seed(3)
    aug = random_resized_crop_flip(x, scale=data.crop_scale, generator=g)
    a = sample_mix_ratio(1.0, g)
    expected, target = mixup(aug, F.one_hot(y, 6).float(), ratio=a)
    torch.testing.assert_close(views.student, expected)
    torch.testing.assert_close(views.target, target)
    assert torch.equal(views.labels, y)
    torch.testing.assert_close(views.target.sum(1), torch.ones(6))


def test_independent_views_differ_and_keep_student_labels():
    x, y = _x()
    data = DataSpec(augment="resized-crop-flip", views="independent")
    views = make_views(x, y, data, 6, torch.Generator().manual_seed(3), two_views=True)
    assert views.teacher is not None and views.teacher.shape == views.student.shape
    assert not torch.allclose(views.teacher, views.student)
    assert torch.equal(views.target, y)  # no mixing: class indices stay
    alone = make_views(x, y, data, 6, torch.Generator().manual_seed(3), two_views=False)
    assert alone.teacher is None and torch.equal(alone.student, views.student)


def test_no_augmentation_passes_the_batch_through():
    x, y = _x()
    views = make_views(x, y, DataSpec(), 6, torch.Generator(), two_views=True)
    assert views.student is x and views.teacher is None and views.target is y
