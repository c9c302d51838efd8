"""The device prefetcher: a passthrough on CPU; on CUDA, one batch ahead on a side stream (ordering tested with a
recording stream; the real CUDA stream only where a GPU is present)."""

import pytest
import torch

from kdgraph.train.prefetch import Prefetcher, prefetch


class RecordingStream:
    """Stands in for the side CUDA stream: records every call, and 'copies' by tagging the batch."""

    def __init__(self, events):
        self.events = events

    def copy(self, batch):
        self.events.append(("copy", int(batch[0])))
        return tuple(t.clone() for t in batch)

    def hand_over(self, batch):
        self.events.append(("hand_over", int(batch[0])))


def batches(n):
    return [(torch.tensor(k), torch.tensor(10 + k)) for k in range(n)]


def test_cpu_passthrough_yields_the_same_batches():
    data = batches(3)
    out = list(prefetch(data, torch.device("cpu")))
    assert len(out) == 3
    for (x, y), (ex, ey) in zip(out, data):
        assert x is ex and y is ey  # .to(cpu) of a CPU tensor: no copy


def test_one_batch_ahead_hand_over_before_the_next_copy():
    events = []
    feeder = Prefetcher(batches(3), RecordingStream(events))
    assert len(feeder) == 3
    for x, y in feeder:
        events.append(("use", int(x)))
        assert int(y) == 10 + int(x)
    assert events == [("copy", 0),
                      ("hand_over", 0), ("copy", 1), ("use", 0),
                      ("hand_over", 1), ("copy", 2), ("use", 1),
                      ("hand_over", 2), ("use", 2)]


def test_empty_loader_and_early_stop():
    events = []
    assert list(Prefetcher([], RecordingStream(events))) == [] and events == []
    for x, _ in Prefetcher(batches(5), RecordingStream(events)):
        if int(x) == 1:
            break
    assert [e for e in events if e[0] == "copy"] == [("copy", 0), ("copy", 1), ("copy", 2)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_prefetch_copies_pinned_batches():
    data = [(torch.randn(4, 3).pin_memory(), torch.arange(4).pin_memory()) for _ in range(3)]
    out = list(prefetch(data, torch.device("cuda")))
    torch.cuda.synchronize()
    for (x, y), (ex, ey) in zip(out, data):
        assert x.is_cuda and torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)


def test_nested_batches_are_copied_whole():
    from kdgraph.train.prefetch import to_device

    batch = (torch.zeros(2), {"views": {"crop": torch.ones(2, 3)}, "teachers": {"t": {"output": torch.ones(2, 4)}}})
    out = list(prefetch([batch], torch.device("cpu")))[0]
    assert out[1]["teachers"]["t"]["output"].shape == (2, 4) and out[1]["views"]["crop"].shape == (2, 3)
    moved = to_device(batch, torch.device("meta"))
    assert moved[1]["views"]["crop"].device.type == "meta" and moved[0].device.type == "meta"
