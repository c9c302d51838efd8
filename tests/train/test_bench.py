"""kdgraph bench: the trainer's step against a hand-written hooks step, same models and losses, on CPU."""

import json

import pytest
import torch

from kdgraph.errors import KdgraphError
from kdgraph.spec import spec_from_dict
from kdgraph.train.bench import BenchResult, BenchRow, HandStep, bench_spec, format_bench, measure

TINY = {
    "name": "bench-tiny",
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 16, "train_subset": 64,
             "test_subset": 32},
    "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"},
                          {"teacher": "layer2:input", "student": "block2", "loss": "cosine", "weight": 0.5}]},
    "train": {"grad_clip": 5.0},
    "runtime": {"threads": 1},
}


def make(tmp_path, **changes):
    doc = json.loads(json.dumps(TINY))
    doc.update(changes)
    doc["output"] = str(tmp_path / "run")
    return spec_from_dict(doc)


def test_bench_times_both_steps_with_the_same_loss_and_writes_nothing(tmp_path):
    result = bench_spec(make(tmp_path), steps=3, warmup=1, batch=8)
    assert [r.variant for r in result.rows] == ["hand-written", "kdgraph"]
    assert result.batch == 8 and result.input_shape == (1, 28, 28) and result.device == "cpu"
    for row in result.rows:
        assert row.images_per_s > 0 and row.step_ms > 0 and row.first_step_s > 0 and row.peak_mib is None
    # same weights, same batch, same terms (CE, KL, MSE through a projector, cosine on a pre-hooked input)
    assert result.loss_rel_diff < 1e-5
    assert result.ratio == pytest.approx(result.rows[1].images_per_s / result.rows[0].images_per_s)
    assert not (tmp_path / "run").exists()
    text = format_bench(result)
    assert "hand-written" in text and "kdgraph" in text and "ratio kdgraph / hand-written" in text


def test_hand_step_trains(tmp_path):
    from kdgraph.plan import resolve_plan

    resolved = resolve_plan(make(tmp_path))
    hand = HandStep(resolved.spec, resolved.student, resolved.teacher, resolved.graph,
                    resolved.runtime, steps_per_epoch=4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(10, (8,))
    before = [p.detach().clone() for p in hand.params]
    losses = [float(hand.step(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, hand.params))
    assert set(hand.t_feats) == {"layer3", "layer2:input"} and set(hand.s_feats) == {"block3", "block2"}


def test_function_node_taps_are_refused_with_the_pair_key(tmp_path):
    spec = make(tmp_path, distill={"pairs": [{"teacher": "layer3.0.add", "student": "block3"}]})
    with pytest.raises(KdgraphError, match="layer3.0.add.*forward hooks") as err:
        bench_spec(spec, steps=1, warmup=0, batch=4)
    assert err.value.key == "distill.pairs[0].teacher"


def test_bad_arguments():
    with pytest.raises(KdgraphError, match="--steps must be at least 1"):
        bench_spec(None, steps=0)


def test_measure_counts_images_and_first_step():
    calls = []
    row = measure("x", lambda: calls.append(1) or torch.tensor(2.0), torch.device("cpu"), batch=4, steps=3, warmup=2)
    assert len(calls) == 6 and row.first_loss == 2.0 and row.images_per_s > 0
    result = BenchResult("n", "cpu", "fp32", None, 4, (1,), [BenchRow("hand-written", 100.0, 1, 0, None, 1.0),
                                                             BenchRow("kdgraph", 125.0, 1, 0, None, 1.0)])
    assert result.ratio == 1.25
