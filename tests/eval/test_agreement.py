"""Agreement metrics (function matching): top-1 agreement and mean KL(p_t ‖ p_s) on the test split, checked against
a computation written out by hand, and logged next to val_top1."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import kdgraph
from kdgraph.runtime import resolve_runtime
from kdgraph.spec import Spec
from kdgraph.eval.evaluate import top1_agreement


class Fixed(nn.Module):
    """Returns the logits stored for each input (the input is the sample's id)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits[x[:, 0].long()]


STUDENT = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 4.0], [0.5, 0.0, 0.2], [0.0, 0.0, 1.0]]
TEACHER = [[1.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.5, 2.0], [3.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
LABELS = [1, 1, 2, 0, 2]


def by_hand() -> tuple[float, float, float]:
    def softmax(row):
        z = [math.exp(v) for v in row]
        return [v / sum(z) for v in z]

    argmax = lambda row: row.index(max(row))  # noqa: E731
    top1 = sum(argmax(s) == y for s, y in zip(STUDENT, LABELS)) / 5
    agree = sum(argmax(s) == argmax(t) for s, t in zip(STUDENT, TEACHER)) / 5
    kl = sum(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(softmax(t), softmax(s)))
             for s, t in zip(STUDENT, TEACHER)) / 5
    return top1, agree, kl


@pytest.mark.parametrize("batch", [2, 16])
def test_agreement_and_kl_match_the_written_out_computation(batch):
    data = TensorDataset(torch.arange(5).float()[:, None], torch.tensor(LABELS))
    spec = Spec.model_validate({"student": {"model": "live:student"},
                                "data": {"batch_size": batch, "eval_batch_size": batch}})
    rt = resolve_runtime(spec.runtime.model_copy(update={"device": "cpu"}))
    cache = {}
    row = top1_agreement(Fixed(STUDENT), {"t": Fixed(TEACHER)}, data, spec, rt, cache=cache)
    top1, agree, kl = by_hand()
    assert row["val_top1"] == pytest.approx(top1) and row["val_agree"] == pytest.approx(agree)
    assert row["val_kl"] == pytest.approx(kl, rel=1e-6)
    assert (top1, agree) == (0.8, 0.6)  # student argmax 0,1,2,0,2; teacher 1,1,2,0,0
    # the teacher's logits are reused: a second evaluation does not run it
    again = top1_agreement(Fixed(STUDENT), {"t": None}, data, spec, rt, cache=cache)
    assert again == row
    two = top1_agreement(Fixed(STUDENT), {"a": Fixed(TEACHER), "b": Fixed(STUDENT)}, data, spec, rt)
    assert two["val_agree/a"] == pytest.approx(agree) and two["val_agree/b"] == 1.0 and two["val_kl/b"] == 0.0
    # logits given in data-set order (a teacher store's): the same metrics, nothing run; beside a teacher that runs
    stored = top1_agreement(Fixed(STUDENT), {"t": None}, data, spec, rt, stored={"t": torch.tensor(TEACHER)})
    assert stored == row
    mixed = top1_agreement(Fixed(STUDENT), {"b": Fixed(STUDENT)}, data, spec, rt, stored={"a": torch.tensor(TEACHER)})
    assert mixed == two


def test_agreement_is_logged_next_to_val_top1(tmp_path):
    result = kdgraph.distill({"teacher": {"model": "kdgraph:fmnist_cnn_wide", "weights": "builtin"},
                              "student": {"model": "kdgraph:fmnist_cnn"}, "distill": {"logits": {}},
                              "data": {"source": "embedded", "train_subset": 256, "test_subset": 100,
                                       "batch_size": 64},
                              "train": {"epochs": 1}, "runtime": {"device": "cpu"}, "output": str(tmp_path / "r")},
                             write=True, quiet=True)
    row = result.metrics[-1]
    assert 0 <= row["val_agree"] <= 1 and row["val_kl"] > 0 and "val_top1" in row
    from kdgraph.session.progress import epoch_line
    assert f"agree {row['val_agree']:.2%}  kl {row['val_kl']:.4f}" in epoch_line(row, {})
