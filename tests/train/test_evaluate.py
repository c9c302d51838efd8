"""k-NN and linear-probe evaluation on embeddings, against a plain recomputation."""

import torch

from kdgraph.eval.evaluate import knn_top1, linear_probe_top1


def _knn_by_hand(bank, bank_y, queries, k):
    """Cosine similarity to every bank row, k best, majority label; ties to the larger summed similarity."""
    out = []
    for q in queries.double():
        sims = [(float(q @ b.double() / (q.norm() * b.double().norm())), int(label)) for b, label in zip(bank, bank_y)]
        best = sorted(sims, key=lambda s: -s[0])[:k]
        counts, sums = {}, {}
        for sim, label in best:
            counts[label] = counts.get(label, 0) + 1
            sums[label] = sums.get(label, 0.0) + sim
        out.append(max(counts, key=lambda c: (counts[c], sums[c])))
    return torch.tensor(out)


def test_knn_matches_a_written_out_vote():
    g = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(60, 5, generator=g), torch.randint(0, 4, (60,), generator=g)
    queries, y = torch.randn(25, 5, generator=g), torch.randint(0, 4, (25,), generator=g)
    for k in (1, 4, 7):  # even k makes ties common
        expected = int((_knn_by_hand(bank, bank_y, queries, k) == y).sum()) / len(y)
        assert knn_top1(bank, bank_y, queries, y, k=k, chunk=7) == expected


def test_knn_on_clusters_and_k_larger_than_bank():
    centres = torch.eye(3) * 10
    bank = centres.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 3)
    bank_y = torch.arange(3).repeat_interleave(4)
    assert knn_top1(bank, bank_y, centres, torch.arange(3), k=3) == 1.0
    # k = 100 > 12: the whole bank votes, every label gets 4 votes, and the tie goes to the most similar cluster
    assert knn_top1(bank, bank_y, centres, torch.arange(3), k=100) == 1.0


def test_linear_probe_separable_and_random_labels():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, generator=g)
    train_e, test_e = torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g)
    train_y, test_y = (train_e @ w).argmax(1), (test_e @ w).argmax(1)
    assert linear_probe_top1(train_e, train_y, test_e, test_y) > 0.95
    noise_y = torch.randint(0, 3, (200,), generator=g)
    assert linear_probe_top1(train_e, train_y, test_e, noise_y) < 0.5
    # deterministic: no random init, no data order
    assert linear_probe_top1(train_e, train_y, test_e, test_y) == linear_probe_top1(train_e, train_y, test_e, test_y)


def test_eval_keys_reach_the_trainer(tiny_doc, monkeypatch):
    """eval.every skips evaluations (never the last), eval.embedding picks the tap, eval.knn_k reaches k-NN."""
    from kdgraph.spec import spec_from_dict
    from kdgraph.eval import evaluate
    from kdgraph.train import train

    seen_k = []
    knn = evaluate.knn_top1
    monkeypatch.setattr(evaluate, "knn_top1", lambda *a, k, **kw: seen_k.append(k) or knn(*a, k=k, **kw))
    tiny_doc["train"]["epochs"] = 3
    tiny_doc["eval"] = {"metrics": ["knn", "top1"], "embedding": "block3", "knn_k": 3, "every": 2}
    result = train(spec_from_dict(tiny_doc), write=False, quiet=True)
    assert [("val_knn" in r, "val_top1" in r) for r in result.metrics] == [(False, False), (True, True), (True, True)]
    assert result.plan.graph.embedding == "block3" and seen_k == [3, 3]
    assert result.summary["student_knn"] == result.metrics[-1]["val_knn"]
