import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from kdgraph.data import DataError, TensorImageDataset, make_loader
from kdgraph.data.loader import SeededDataLoader, TensorBatchLoader, epoch_indices


def _ds(n=23, transform=None):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return TensorImageDataset(x, torch.arange(n) % 3, transform=transform)


def _order(loader):
    return torch.cat([x[:, 0, 0, 0] for x, _ in loader]).long().tolist()


class _Plain(Dataset):
    """A map-style dataset without tensor backing (forces the DataLoader path)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), i % 3


def test_make_loader_picks_fast_path():
    assert isinstance(make_loader(_ds(), 4, train=True, seed=0, drop_last=False), TensorBatchLoader)
    assert isinstance(make_loader(TensorDataset(torch.zeros(5, 1)), 2, train=True, seed=0, drop_last=False),
                      TensorBatchLoader)
    assert isinstance(make_loader(_ds(), 4, train=True, seed=0, drop_last=False, fast=False), SeededDataLoader)
    assert isinstance(make_loader(_ds(transform=lambda t: t), 4, train=True, seed=0, drop_last=False),
                      SeededDataLoader)
    assert isinstance(make_loader(_Plain(5), 2, train=False, seed=0, drop_last=False), SeededDataLoader)


@pytest.mark.parametrize("fast", [True, False])
def test_order_depends_only_on_seed_and_epoch(fast):
    a = make_loader(_ds(), 4, train=True, seed=1, drop_last=False, fast=fast)
    b = make_loader(_ds(), 4, train=True, seed=1, drop_last=False, fast=fast)
    e0 = _order(a)
    assert sorted(e0) == list(range(23)) and e0 != list(range(23))
    e1 = _order(a)  # iteration advances the epoch
    assert e1 != e0
    # b jumps straight to epoch 1 after never iterating epoch 0: same order
    b.set_epoch(1)
    assert _order(b) == e1
    b.set_epoch(0)
    assert _order(b) == e0
    a.set_epoch(5)
    b.set_epoch(5)
    assert _order(a) == _order(b)
    c = make_loader(_ds(), 4, train=True, seed=2, drop_last=False, fast=fast)
    assert _order(c) != e0


def test_fast_and_dataloader_paths_agree():
    fast = make_loader(_ds(), 5, train=True, seed=3, drop_last=True)
    slow = make_loader(_ds(), 5, train=True, seed=3, drop_last=True, fast=False)
    for e in (0, 4):
        fast.set_epoch(e)
        slow.set_epoch(e)
        for (xf, yf), (xs, ys) in zip(fast, slow, strict=True):
            assert torch.equal(xf, xs) and torch.equal(yf, ys)
    assert fast.epoch == slow.epoch == 5


@pytest.mark.parametrize("fast", [True, False])
def test_eval_is_sequential(fast):
    loader = make_loader(_ds(), 4, train=False, seed=9, drop_last=False, fast=fast)
    assert _order(loader) == list(range(23))
    loader.set_epoch(3)
    assert _order(loader) == list(range(23))


@pytest.mark.parametrize("fast", [True, False])
def test_drop_last_and_len(fast):
    keep = make_loader(_ds(23), 5, train=True, seed=0, drop_last=False, fast=fast)
    drop = make_loader(_ds(23), 5, train=True, seed=0, drop_last=True, fast=fast)
    assert len(keep) == 5 and len(drop) == 4
    sizes = [x.shape[0] for x, _ in keep]
    assert sizes == [5, 5, 5, 5, 3]
    sizes = [x.shape[0] for x, _ in drop]
    assert sizes == [5, 5, 5, 5]
    assert len(_order(drop)) == 20


@pytest.mark.parametrize("fast", [True, False])
def test_skip_resumes_mid_epoch(fast):
    loader = make_loader(_ds(), 4, train=True, seed=4, drop_last=False, fast=fast)
    loader.set_epoch(2)
    full = [y.tolist() for _, y in loader]
    loader.set_epoch(2)
    loader.skip(3)
    rest = [y.tolist() for _, y in loader]
    assert rest == full[3:]
    # skip is one-shot: the next epoch is complete
    assert len(list(loader)) == len(loader) == 6
    loader.set_epoch(2)
    loader.skip(len(loader))
    assert list(loader) == []
    with pytest.raises(DataError):
        loader.skip(-1)


def test_yields_expected_types():
    ds = _ds()
    x, y = next(iter(make_loader(ds, 4, train=True, seed=0, drop_last=False)))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 2, 2) and y.dtype == torch.int64
    x, y = next(iter(make_loader(ds, 4, train=True, seed=0, drop_last=False, fast=False)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_epoch_indices_and_errors():
    assert torch.equal(epoch_indices(7, seed=0, epoch=0, shuffle=False), torch.arange(7))
    assert torch.equal(epoch_indices(50, seed=1, epoch=2, shuffle=True), epoch_indices(50, seed=1, epoch=2, shuffle=True))
    assert not torch.equal(epoch_indices(50, seed=1, epoch=2, shuffle=True), epoch_indices(50, seed=1, epoch=3, shuffle=True))
    with pytest.raises(DataError, match="batch_size"):
        make_loader(_ds(), 0, train=True, seed=0, drop_last=False)
    with pytest.raises(DataError, match="empty"):
        make_loader(_ds(0), 2, train=True, seed=0, drop_last=False)
    with pytest.raises(DataError):
        TensorBatchLoader(_Plain(4), 2, shuffle=True, seed=0, drop_last=False)


class _Unreadable(Dataset):
    """A map-style data set whose sample 1 is a file kdgraph cannot read."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 1:
            raise DataError("imagefolder: train/b/broken.png cannot be read as an image; delete or replace the file.")
        return torch.zeros(1), i


def test_a_data_error_in_a_worker_keeps_its_one_line_message():
    # a DataLoader worker re-raises as DataError("Caught DataError in DataLoader worker ...\nOriginal Traceback ...");
    # the CLI prints that message, so it must stay the original one line, without the worker's traceback
    loader = make_loader(_Unreadable(), 2, train=False, seed=0, drop_last=False, num_workers=1)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value) == "imagefolder: train/b/broken.png cannot be read as an image; delete or replace the file."


def test_fetch_gathers_any_positions_with_or_without_the_batched_path():
    from kdgraph.data import TensorImageDataset
    from kdgraph.data.loader import fetch

    images = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 1, 2, 2)
    labels = torch.tensor([4, 3, 2, 1, 0])
    idx = torch.tensor([3, 0, 3])
    fast = TensorImageDataset(images, labels)
    slow = TensorImageDataset(images, labels, transform=lambda x: x)  # per-sample path
    for ds in (fast, slow, torch.utils.data.TensorDataset(images, labels)):
        x, y = fetch(ds, idx)
        assert torch.equal(x, images[idx]) and torch.equal(y, labels[idx])
