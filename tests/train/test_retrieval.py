"""Retrieval mAP (``eval: [map]``) against a case worked by hand and a loop over the ranked list in float64."""

import math

import pytest
import torch

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.eval.retrieval import average_precisions, mean_average_precision


def _ap_by_loop(query, label, database, database_labels):
    """Textbook AP in float64: rank the database by cosine similarity, then (1/R) Σ_k rel_k · precision@k."""
    q = query.double() / query.double().norm()
    sims = [float(q @ (d.double() / d.double().norm())) for d in database]
    ranked = sorted(range(len(database)), key=lambda i: -sims[i])
    hits, total, relevant = 0, 0.0, int((database_labels == label).sum())
    for k, i in enumerate(ranked, start=1):
        if int(database_labels[i]) == int(label):
            hits += 1
            total += hits / k
    return total / relevant if relevant else 0.0


def test_a_case_worked_by_hand_with_a_tie_and_an_absent_class():
    # query (1, 0) of class 0; similarities: d0 1 (class 0), d1 and d4 1/√2 (classes 1 and 0: a tie), d2 0 (class 0),
    # d3 -1 (class 1). The relevant items are reached at thresholds 1, 1/√2 and 0, where 1/1, 2/3 and 3/4 of the
    # items reached are relevant: AP = (1 + 2/3 + 3/4) / 3 = 29/36, whatever the order of d1 and d4.
    database = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, -1.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    query_labels = torch.tensor([0, 2])  # class 2 has no item in the database: AP 0
    aps = average_precisions(queries, query_labels, database, labels)
    assert aps.dtype == torch.float64
    assert aps.tolist() == pytest.approx([29 / 36, 0.0], abs=1e-12)
    assert mean_average_precision(queries, query_labels, database, labels) == pytest.approx(29 / 72, abs=1e-12)
    # the same database in another order: the tie is ranked as a group, so nothing changes
    perm = torch.tensor([4, 3, 2, 1, 0])
    assert average_precisions(queries, query_labels, database[perm], labels[perm]).tolist() == pytest.approx(
        [29 / 36, 0.0], abs=1e-12)


def test_a_ranked_list_without_ties_by_hand():
    # ranked relevance 1, 0, 1, 0, 0: AP = (1/1 + 2/3) / 2 = 5/6
    angles = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.2])
    database = torch.stack([angles.cos(), angles.sin()], dim=1)
    aps = average_precisions(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), database, torch.tensor([1, 0, 1, 0, 0]))
    assert float(aps[0]) == pytest.approx(5 / 6, abs=1e-12)


def test_random_embeddings_match_the_loop_over_the_ranked_list():
    g = torch.Generator().manual_seed(0)
    database, labels = torch.randn(300, 8, generator=g), torch.randint(0, 5, (300,), generator=g)
    queries, query_labels = torch.randn(40, 8, generator=g), torch.randint(0, 5, (40,), generator=g)
    expected = [_ap_by_loop(q, y, database, labels) for q, y in zip(queries, query_labels)]
    for chunk in (7, 256):  # chunks of queries do not change anything
        got = average_precisions(queries, query_labels, database, labels, chunk=chunk)
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
    assert mean_average_precision(queries, query_labels, database, labels) == pytest.approx(
        sum(expected) / len(expected), abs=1e-6)


def test_ties_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    # few distinct vectors, so many database items share a similarity with every query
    database = torch.randint(-1, 2, (200, 3), generator=g).float()
    database[database.abs().sum(1) == 0] = 1.0
    labels = torch.randint(0, 3, (200,), generator=g)
    queries, query_labels = torch.randn(20, 3, generator=g), torch.randint(0, 3, (20,), generator=g)
    got = average_precisions(queries, query_labels, database, labels)
    db = torch.nn.functional.normalize(database, dim=1)
    for i, (q, y) in enumerate(zip(queries, query_labels)):
        scores = (torch.nn.functional.normalize(q, dim=0) @ db.T).numpy()
        assert float(got[i]) == pytest.approx(metrics.average_precision_score((labels == y).numpy(), scores), abs=1e-9)


def test_perfect_and_reversed_embeddings():
    labels = torch.arange(4).repeat_interleave(5)
    database = torch.eye(4)[labels] + 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    assert mean_average_precision(torch.eye(4), torch.arange(4), database, labels) == pytest.approx(1.0)
    # every query ranks its own class last: relevant at ranks 16..20 of 20
    worst = sum(k / (15 + k) for k in range(1, 6)) / 5
    assert mean_average_precision(-torch.eye(4), torch.arange(4), database, labels) == pytest.approx(worst, abs=1e-9)
    # without the noise its own class ties at -1, reached only with the whole database: precision 5/20 each
    assert mean_average_precision(-torch.eye(4), torch.arange(4), torch.eye(4)[labels], labels) == pytest.approx(0.25)
    assert not math.isclose(worst, 0.25)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same D"):
        average_precisions(torch.randn(2, 3), torch.zeros(2), torch.randn(4, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="one label"):
        average_precisions(torch.randn(2, 3), torch.zeros(3), torch.randn(4, 3), torch.zeros(4))


def test_eval_map_reaches_the_trainer(tiny_doc, monkeypatch):
    """``eval: [map, top1]`` logs ``val_map``: the mAP of the student's test embeddings against its train ones."""
    from kdgraph.eval import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "mean_average_precision",
                        lambda q, qy, d, dy: seen.append((q.shape, d.shape)) or mean_average_precision(q, qy, d, dy))
    tiny_doc["eval"] = {"metrics": ["map", "top1"]}
    tiny_doc["train"]["epochs"] = 1
    result = train(spec_from_dict(tiny_doc), write=False, quiet=True)
    row = result.metrics[-1]
    assert 0.0 < row["val_map"] <= 1.0 and "val_top1" in row
    assert seen == [(torch.Size([64, 16]), torch.Size([192, 16]))]  # 64 test queries, 192 train items, 16-d
    assert result.summary["student_map"] == row["val_map"]
