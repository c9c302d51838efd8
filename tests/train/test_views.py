"""Function matching's views: shared views give teachers the student's exact (augmented, mixed) batch."""

import pytest
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


def test_crop_flip_pads_with_black_in_pixel_space_and_takes_the_padding_key():
    """White images, normalised: every pixel the crop brings in from the padding is black, (0 - mean) / std."""
    mean, std = (0.2860,), (0.3530,)
    white = torch.full((64, 1, 8, 8), (1.0 - mean[0]) / std[0])
    black = (0.0 - mean[0]) / std[0]
    for padding, expected_width in ((None, 1), (3, 3)):
        data = DataSpec(augment="crop-flip", crop_padding=padding)
        out = make_views(white, torch.zeros(64, dtype=torch.long), data, 10, torch.Generator().manual_seed(0),
                         two_views=False, norm=(mean, std)).student
        is_black = torch.isclose(out, torch.tensor(black), atol=1e-6)
        assert (is_black | torch.isclose(out, white[:1], atol=1e-6)).all()  # nothing but white and black
        black_rows = is_black.all(dim=-1).sum(dim=(1, 2))  # full black rows per image: at most the padding
        assert int(black_rows.max()) == expected_width
    grey = DataSpec(augment="crop-flip", crop_fill=0.5)
    out = make_views(white, torch.zeros(64, dtype=torch.long), grey, 10, torch.Generator().manual_seed(0),
                     two_views=False, norm=(mean, std)).student
    assert torch.isclose(out, torch.tensor((0.5 - mean[0]) / std[0])).any()
