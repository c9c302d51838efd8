"""Retrieval mean average precision (``eval: [map]``): test images as queries, the train split as the database.

InDistill (Sarridis et al.) and PKT (Passalis & Tefas) report retrieval mAP: every test embedding queries the train
embeddings, ranked by cosine similarity, and a database item is relevant when it has the query's label.

For one query with similarities ``s_1..s_N`` to the database and ``R`` relevant items, the average precision is

    AP = (1/R) · Σ_{i relevant} P(s_i),   P(v) = #{relevant j: s_j ≥ v} / #{all k: s_k ≥ v}

the precision at the threshold of each relevant item, averaged over the relevant items: the area under the
(non-interpolated) precision-recall curve, as ``sklearn.metrics.average_precision_score`` computes it. Without ties
this is the textbook ``(1/R) Σ_k rel_k · precision@k`` over the ranked list; items with equal similarity are ranked
together (each gets the precision of the whole tied group), so the value does not depend on the database order. A
query whose class has no item in the database has AP 0. mAP is the mean over the queries.

This is not the 11-point interpolated mAP of the InDistill and PKT code (precision interpolated at recall 0, 0.1,
..., 1); the non-interpolated value is the standard one and has no arbitrary recall grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["average_precisions", "mean_average_precision"]


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` sorted ascending. On the CPU numpy's values-only sort is about three times faster than
    ``torch.sort``, which also builds the indices."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def average_precisions(queries: torch.Tensor, query_labels: torch.Tensor, database: torch.Tensor,
                       database_labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """AP of every query (float64, shape ``(Q,)``); see the module docstring for the definition.

    ``queries`` ``(Q, D)`` and ``database`` ``(N, D)`` are compared by cosine similarity (both L2-normalised, in
    float32); labels are integer class indices. Runs ``chunk`` queries at a time on the tensors' device."""
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and database {tuple(database.shape)} must be (Q, D) and "
                         "(N, D) with the same D")
    if len(query_labels) != len(queries) or len(database_labels) != len(database):
        raise ValueError("one label per query and per database item is needed")
    db = F.normalize(database.float(), dim=1)
    n = len(db)
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim = q @ db.T  # (C, N)
        rel = database_labels[None, :] == query_labels[start:start + chunk, None].to(database_labels.device)
        all_sorted = _sorted_rows(sim)
        # the relevant similarities of each row, packed to the left of a (C, max R) block padded with +inf, sorted
        counts = rel.sum(1)
        width = max(1, int(counts.max()))
        rows, cols = rel.nonzero(as_tuple=True)
        packed = torch.full((len(sim), width), float("inf"), dtype=sim.dtype, device=sim.device)
        packed[rows, (rel.cumsum(1, dtype=torch.int32) - 1)[rows, cols].long()] = sim[rows, cols]
        rel_sorted = _sorted_rows(packed)
        # how many items (relevant items) reach each relevant similarity: everything from its first occurrence on
        at_least_all = n - torch.searchsorted(all_sorted, rel_sorted, side="left")
        at_least_rel = counts[:, None] - torch.searchsorted(rel_sorted, rel_sorted, side="left")
        valid = torch.arange(width, device=sim.device)[None, :] < counts[:, None]
        precision = at_least_rel.double() / at_least_all.clamp_min(1).double()
        ap = torch.where(valid, precision, 0.0).sum(1) / counts.clamp_min(1).double()
        out.append(ap)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def mean_average_precision(queries: torch.Tensor, query_labels: torch.Tensor, database: torch.Tensor,
                           database_labels: torch.Tensor, chunk: int = 256) -> float:
    """mAP of ``queries`` retrieving from ``database`` (cosine similarity): the mean of :func:`average_precisions`."""
    return float(average_precisions(queries, query_labels, database, database_labels, chunk).mean())
