"""What each model sees: per-image views that depend on (seed, view, image) alone, shared or independent, with
mixing partners drawn from the data set; function matching's shared views give teachers the student's exact batch."""

import torch
import torch.nn.functional as F

from kdgraph.data import TensorImageDataset
from kdgraph.data.augment import mix_images, resized_crop_flip
from kdgraph.spec.schema import DataSpec
from kdgraph.data.views import SHARED, TEACHER, ViewMaker


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randn(n, 1, 12, 12, generator=g), torch.arange(n) % 10)


def _maker(data: DataSpec, dataset=None, seed=3, two_views=True, norm=None):
    dataset = dataset if dataset is not None else _data()
    return ViewMaker(data, num_classes=10, seed=seed, dataset=dataset, image_shape=(1, 12, 12), norm=norm,
                     two_views=two_views)


def _views(maker, index, view):
    x, y = maker.dataset.get_batch(index)
    return maker.views(x, y, maker.prepare(index, view))


def test_shared_views_mix_per_image_and_give_soft_targets():
    data = DataSpec(augment="resized-crop-flip", mix={"name": "mixup", "alpha": 1.0})
    maker = _maker(data)
    index = torch.tensor([4, 9, 0, 31, 17, 22])
    views = _views(maker, index, view=2)
    assert views.teacher is None  # the graph feeds the student's tensor to every teacher
    # replayed by hand from the numbers: the image's crop, its partner's own crop, one ratio per image
    p = maker.draw(index, 2)
    assert torch.equal(p.partner, maker.partners(2)[index])
    x, y = maker.dataset.get_batch(index)
    xp, yp = maker.dataset.get_batch(p.partner)
    own = resized_crop_flip(x, p.crop[:, :4], p.crop[:, 4] > 0.5)
    theirs = resized_crop_flip(xp, p.partner_crop[:, :4], p.partner_crop[:, 4] > 0.5)
    torch.testing.assert_close(views.student, mix_images(own, theirs, p.ratio))
    assert bool(((p.ratio >= 0.5) & (p.ratio <= 1)).all()) and len(set(p.ratio.tolist())) == 6  # max(a, 1 - a)
    want = p.ratio[:, None].float() * F.one_hot(y, 10) + (1 - p.ratio[:, None].float()) * F.one_hot(yp, 10)
    torch.testing.assert_close(views.target, want)
    torch.testing.assert_close(views.target.sum(1), torch.ones(6))
    assert torch.equal(views.labels, y)


def test_a_view_depends_on_seed_view_and_image_alone():
    for data in (DataSpec(augment="crop-flip", mix="cutmix"), DataSpec(augment="resized-crop-flip", mix="mixup")):
        maker = _maker(data)
        a = _views(maker, torch.tensor([3, 8, 21, 5]), view=1).student
        b = _views(_maker(data), torch.tensor([5, 30, 3]), view=1).student  # another batch, order and maker
        torch.testing.assert_close(b[0], a[3], rtol=0, atol=0)
        torch.testing.assert_close(b[2], a[0], rtol=0, atol=0)
        assert not torch.equal(_views(maker, torch.tensor([3]), view=2).student[0], a[0])  # another view
        assert not torch.equal(_views(_maker(data, seed=4), torch.tensor([3]), view=1).student[0], a[0])


def test_partners_are_a_permutation_of_the_data_set_per_view():
    maker = _maker(DataSpec(mix="mixup"))
    everyone = maker.draw(torch.arange(40), 0).partner
    assert sorted(everyone.tolist()) == list(range(40))  # every image is somebody's partner once per view
    assert not torch.equal(everyone, maker.draw(torch.arange(40), 1).partner)


def test_data_parallel_halves_make_the_halves_of_the_views():
    data = DataSpec(augment="crop-flip", mix="mixup")
    index = torch.tensor([7, 1, 30, 12, 19, 2, 33, 8])
    whole = _views(_maker(data), index, 5)
    halves = [_views(_maker(data), index[r * 4:(r + 1) * 4], 5) for r in range(2)]
    assert torch.equal(torch.cat([h.student for h in halves]), whole.student)
    assert torch.equal(torch.cat([h.target for h in halves]), whole.target)


def test_independent_views_differ_and_keep_student_labels():
    data = DataSpec(augment="resized-crop-flip", views="independent")
    index = torch.arange(6)
    views = _views(_maker(data), index, 0)
    assert views.teacher is not None and views.teacher.shape == views.student.shape
    assert not torch.allclose(views.teacher, views.student)
    assert torch.equal(views.target, torch.arange(6))  # no mixing: class indices stay
    alone = _views(_maker(data, two_views=False), index, 0)
    assert alone.teacher is None and torch.equal(alone.student, views.student)
    maker = _maker(data)
    assert not torch.equal(maker.draw(index, 0, SHARED).crop, maker.draw(index, 0, TEACHER).crop)


def test_independent_mixed_views_mix_the_same_pair_with_their_own_noise():
    """Independent noise on the same images: the teacher's view of image i mixes i with the student's partner, each
    through the teacher's own crops and ratio (a teacher mixed with another image would teach that image's class)."""
    maker = _maker(DataSpec(augment="resized-crop-flip", views="independent", mix={"name": "mixup", "alpha": 1.0}))
    index = torch.tensor([4, 9, 0, 31, 17, 22])
    student, teacher = maker.draw(index, 3, SHARED), maker.draw(index, 3, TEACHER)
    assert torch.equal(teacher.partner, student.partner)
    assert not torch.equal(teacher.crop, student.crop) and not torch.equal(teacher.partner_crop, student.partner_crop)
    assert not torch.equal(teacher.ratio, student.ratio)
    views = _views(maker, index, 3)
    x, _ = maker.dataset.get_batch(index)
    xp, _ = maker.dataset.get_batch(student.partner)
    own = resized_crop_flip(x, teacher.crop[:, :4], teacher.crop[:, 4] > 0.5)
    theirs = resized_crop_flip(xp, teacher.partner_crop[:, :4], teacher.partner_crop[:, 4] > 0.5)
    torch.testing.assert_close(views.teacher, mix_images(own, theirs, teacher.ratio))


def test_no_augmentation_passes_the_batch_through():
    maker = _maker(DataSpec())
    x, y = maker.dataset.get_batch(torch.arange(6))
    prepared = maker.prepare(torch.arange(6), 0)
    assert prepared == {}
    views = maker.views(x, y, prepared)
    assert views.student is x and views.teacher is None and views.target is y


def test_crop_flip_pads_with_black_in_pixel_space_and_takes_the_padding_key():
    """White images, normalised: every pixel the crop brings in from the padding is black, (0 - mean) / std."""
    mean, std = (0.2860,), (0.3530,)
    white_value = (1.0 - mean[0]) / std[0]
    white = TensorImageDataset(torch.full((64, 1, 8, 8), white_value), torch.zeros(64, dtype=torch.long))
    black = (0.0 - mean[0]) / std[0]
    for padding, expected_width in ((None, 1), (3, 3)):
        data = DataSpec(augment="crop-flip", crop_padding=padding)
        maker = ViewMaker(data, num_classes=10, seed=0, dataset=white, image_shape=(1, 8, 8), norm=(mean, std))
        out = _views(maker, torch.arange(64), 0).student
        is_black = torch.isclose(out, torch.tensor(black), atol=1e-6)
        assert (is_black | torch.isclose(out, torch.tensor(white_value), atol=1e-6)).all()  # only white and black
        black_rows = is_black.all(dim=-1).sum(dim=(1, 2))  # full black rows per image: at most the padding
        assert int(black_rows.max()) == expected_width
    grey = ViewMaker(DataSpec(augment="crop-flip", crop_fill=0.5), num_classes=10, seed=0, dataset=white,
                     image_shape=(1, 8, 8), norm=(mean, std))
    assert torch.isclose(_views(grey, torch.arange(64), 0).student, torch.tensor((0.5 - mean[0]) / std[0])).any()
