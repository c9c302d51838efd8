"""A record's tensors: top-k logits replayed as documented (exact at T = 1 on the top k, the rest spread evenly),
pooled layers replayed through the pair's own pooling step."""

import torch

from kdgraph.align.layout import ClsToken, GlobalAvgPool
from kdgraph.store.records import decode_logits, decode_params, decode_tap, encode_logits, encode_params
from kdgraph.data.views import ViewParams


def test_all_logits_round_trip():
    z = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    stored = encode_logits("t", z, None)
    assert stored["t/t/logits"].dtype == torch.float32
    assert torch.equal(decode_logits("t", stored, 10), z)
    assert encode_logits("t", z.double(), None)["t/t/logits"].dtype == torch.float64


def test_top_k_keeps_the_teachers_top_k_probabilities_and_spreads_the_rest_evenly():
    z = 3 * torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = 5
    stored = encode_logits("t", z, k)
    assert stored["t/t/topk_values"].dtype == torch.float16 and stored["t/t/topk_indices"].dtype == torch.int16
    replayed = decode_logits("t", stored, 10).double()
    p, q = torch.softmax(z, 1), torch.softmax(replayed, 1)
    top = torch.topk(z, k, 1).indices
    # at temperature 1: the top-k probabilities are the teacher's (float16 logits: ~1e-3 relative)
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top), rtol=5e-3, atol=1e-4)
    rest = torch.ones_like(z, dtype=torch.bool).scatter(1, top, False)
    mass_p, mass_q = (p * rest).sum(1), (q * rest).sum(1)
    torch.testing.assert_close(mass_q, mass_p, rtol=5e-3, atol=1e-4)  # the remaining mass
    for row in range(6):  # spread evenly: every other class the same probability
        others = q[row][rest[row]]
        torch.testing.assert_close(others, others.mean().expand_as(others))
    # the replayed row is the k values at their classes and one shared logit: the log-mean-exp of the others
    want = torch.logsumexp(z.masked_fill(~rest, float("-inf")), 1) - torch.log(torch.tensor(10.0 - k))
    torch.testing.assert_close(replayed[rest].view(6, -1)[:, 0], want, rtol=2e-3, atol=2e-3)


def test_params_round_trip_in_their_dtypes():
    p = ViewParams(crop=torch.tensor([[0, 3, 1], [4, 2, 0]]), partner=torch.tensor([7, 1]),
                   ratio=torch.tensor([0.75, 0.5], dtype=torch.float64), box=torch.tensor([[1, 5, 0, 3], [0, 0, 0, 0]]))
    stored = encode_params(p, 100)
    assert stored["view/crop"].dtype == torch.int16 and stored["view/partner"].dtype == torch.int32
    back = decode_params(stored)
    for name in ("crop", "partner", "ratio", "box"):
        assert torch.equal(getattr(back, name), getattr(p, name)) and getattr(back, name).dtype == getattr(p, name).dtype
    boxes = ViewParams(crop=torch.rand(3, 5, dtype=torch.float64))
    assert torch.equal(decode_params(encode_params(boxes, 10)).crop, boxes.crop)


def test_pooled_layers_come_back_through_the_pairs_pooling():
    v = torch.randn(4, 7)
    assert torch.equal(GlobalAvgPool()(decode_tap(v, "map", True)), v)
    assert torch.equal(GlobalAvgPool()(decode_tap(v, "tokens", True)), v)
    assert torch.equal(ClsToken()(decode_tap(v, "tokens", True)), v)
    assert decode_tap(v, "vector", True) is v
    whole = torch.randn(4, 7, 3, 3)
    assert decode_tap(whole, "map", False) is whole
