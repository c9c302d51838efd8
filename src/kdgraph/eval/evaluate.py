"""Evaluation: top-1 of a classifier and of every self-distillation head; k-NN and linear-probe top-1 on the
student's embedding, for students trained without labels (``train.ce_weight: 0``).

With a distributed context each rank evaluates a disjoint share of the data set and the counts are summed, so
every sample is counted exactly once (k-NN and the linear probe run whole on every rank: they are deterministic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kdgraph.data import make_loader
from kdgraph.eval.retrieval import mean_average_precision
from kdgraph.runtime import Runtime
from kdgraph.session.progress import Bar, Reporter
from kdgraph.spec.schema import Spec

if TYPE_CHECKING:
    from kdgraph.data import DataBundle
    from kdgraph.trace import LayerMap
    from kdgraph.session.distributed import DistContext

__all__ = ["top1", "logits_in_order", "top1_agreement", "teachers_top1", "head_top1", "embeddings", "knn_top1", "linear_probe_top1", "embedding_metrics"]


def _eval_logits(module: nn.Module, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: Dataset,
                 spec: Spec, rt: Runtime, world: int = 1,
                 bar: Optional[Bar] = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(named logits, labels) per evaluation batch, under no_grad in eval mode; ``module``'s mode is restored.

    The evaluation batch is global like the training batch: each of ``world`` processes takes its share. ``bar``
    (a progress bar) advances once per batch."""
    was_training = module.training
    module.eval()
    batch = max(1, (spec.data.eval_batch_size or 2 * spec.data.batch_size) // world)
    loader = make_loader(dataset, batch, train=False, seed=0, drop_last=False, num_workers=spec.data.num_workers)
    if bar is not None:
        bar.set_total(len(loader))
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = rt.inputs(x.to(rt.device, non_blocking=True)), y.to(rt.device, non_blocking=True)
                with rt.autocast():
                    logits = forward(x)
                yield logits, y
                if bar is not None:
                    bar.advance()
    finally:
        module.train(was_training)


def _accuracies(module: nn.Module, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: Dataset,
                spec: Spec, rt: Runtime, ensemble: bool, dist: Optional["DistContext"],
                bar: Optional[Bar] = None) -> dict[str, float]:
    """Top-1 per named logits; with ``dist``, over this rank's share (its first ``valid`` samples) summed over ranks."""
    valid = None
    if dist is not None:
        dataset, valid = dist.eval_shard(dataset)
    correct: dict[str, int] = {}
    total = 0
    for logits, y in _eval_logits(module, forward, dataset, spec, rt, dist.world if dist is not None else 1, bar):
        keep = len(y) if valid is None else max(0, min(len(y), valid - total))
        if ensemble:
            logits["ensemble"] = torch.stack([v.float() for v in logits.values()]).mean(0)
        for name, value in logits.items():
            correct[name] = correct.get(name, 0) + int((value[:keep].argmax(1) == y[:keep]).sum())
        total += keep
    if dist is not None:
        correct, total = dist.sum_counts(correct, total)
    return {name: count / max(1, total) for name, count in correct.items()}


def top1(model: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime, dist: Optional["DistContext"] = None,
         bar: Optional[Bar] = None) -> float:
    """Fraction of ``dataset`` whose arg-max logit is the label; the model's train/eval mode is restored."""
    return _accuracies(model, lambda x: {"output": model(x)}, dataset, spec, rt, False, dist, bar).get("output", 0.0)


def logits_in_order(model: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime,
                    dist: Optional["DistContext"] = None) -> torch.Tensor:
    """``model``'s logits on every sample of ``dataset`` in order, float32 on the host (with ``dist``: each rank
    computes its share, gathered)."""
    share = dataset if dist is None else dist.eval_shard(dataset)[0]
    parts = [out["output"].float().cpu() for out, _ in _eval_logits(model, lambda x: {"output": model(x)}, share,
                                                                     spec, rt, dist.world if dist is not None else 1)]
    part = torch.cat(parts)
    return part if dist is None else dist.gather_shards(part, len(dataset))


def top1_agreement(student: nn.Module, teachers: dict[str, nn.Module], dataset: Dataset, spec: Spec, rt: Runtime,
                   dist: Optional["DistContext"] = None,
                   cache: Optional[dict[tuple[str, int], torch.Tensor]] = None,
                   stored: Optional[dict[str, torch.Tensor]] = None) -> dict[str, float]:
    """The student's top-1 and, for every teacher that classifies the data, the agreement metrics of function
    matching (Beyer et al., CVPR 2022), in one pass over ``dataset``:

    - ``val_agree``: the fraction of images whose top-1 class is the same for student and teacher;
    - ``val_kl``: the mean over images of ``KL(p_t ‖ p_s) = Σ_k p_t,k (log p_t,k − log p_s,k)``, the softmax of each
      model's logits at temperature 1, in nats.

    With several teachers the keys are ``val_agree/NAME`` and ``val_kl/NAME``. The frozen teachers' logits are
    computed at the first call and kept in ``cache`` (by teacher and batch, on the host), so later evaluations run
    only the student. ``stored``: teachers whose logits on ``dataset`` are given, in data-set order (a teacher store
    holds them; these teachers do not run). With ``dist`` each rank takes its share and the sums are added over
    ranks."""
    cache = {} if cache is None else cache
    stored = stored or {}
    positions, valid = (torch.arange(len(dataset)), None) if dist is None else dist.eval_positions(len(dataset))
    if dist is not None:
        dataset, valid = dist.eval_shard(dataset)
    batches, seen = iter(range(1 << 62)), 0

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal seen
        b, out = next(batches), {"output": student(x)}
        rows = positions[seen:seen + len(x)]
        seen += len(x)
        for name, logits in stored.items():
            out[name] = logits.index_select(0, rows).to(x.device)
        for name, teacher in teachers.items():
            if (name, b) not in cache:
                cache[(name, b)] = teacher(x).float().cpu()
            out[name] = cache[(name, b)].to(x.device)
        return out

    teachers = {n: t for n, t in teachers.items() if n not in stored}
    names = [*stored, *teachers]
    sums = {"correct": 0.0, **{f"agree/{n}": 0.0 for n in names}, **{f"kl/{n}": 0.0 for n in names}}
    total = 0
    for logits, y in _eval_logits(student, forward, dataset, spec, rt, dist.world if dist is not None else 1):
        keep = len(y) if valid is None else max(0, min(len(y), valid - total))
        s = logits["output"][:keep].float()
        sums["correct"] += float((s.argmax(1) == y[:keep]).sum())
        log_ps = torch.log_softmax(s.double(), dim=1)
        for name in names:
            t = logits[name][:keep]
            log_pt = torch.log_softmax(t.double(), dim=1)
            sums[f"agree/{name}"] += float((s.argmax(1) == t.argmax(1)).sum())
            sums[f"kl/{name}"] += float((log_pt.exp() * (log_pt - log_ps)).sum())
        total += keep
    if dist is not None:
        reduced, total = dist.reduce_sums({k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}, total)
        sums = {k: float(v) for k, v in reduced.items()}
    n = max(1, total)
    row = {"val_top1": sums["correct"] / n}
    for name in names:
        suffix = "" if len(names) == 1 else f"/{name}"
        row[f"val_agree{suffix}"] = sums[f"agree/{name}"] / n
        row[f"val_kl{suffix}"] = sums[f"kl/{name}"] / n
    return row


def teachers_top1(teachers: dict[str, nn.Module], maps: dict[str, "LayerMap"], data: "DataBundle", spec: Spec,
                  rt: Runtime, dist: Optional["DistContext"] = None, known: Optional[dict] = None,
                  reporter: Optional["Reporter"] = None) -> dict[str, float]:
    """Test top-1 of every teacher that classifies this data set (its layer map's probe gives one logit per class),
    by summary key (``teacher_top1``, or ``teacher_top1/NAME`` with several teachers in ``maps``); a value already in
    ``known`` (a finished run's summary) is reused. ``teachers`` read the data's batches (``Plan.teacher_classifiers``:
    each through its input conversion). ``reporter`` shows a progress bar per teacher measured."""
    known, scores, reporter = known or {}, {}, reporter or Reporter(quiet=True)
    for name, teacher in teachers.items():
        key = "teacher_top1" if len(maps) == 1 else f"teacher_top1/{name}"
        if key in known:
            scores[key] = known[key]
        elif maps[name].logit_count == data.num_classes:
            with reporter.phase_bar("teacher top-1" + (f" {name}" if len(maps) > 1 else "")) as bar:
                scores[key] = top1(teacher.to(rt.device), data.test, spec, rt, dist, bar)
    return scores


def head_top1(graph: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime,
              dist: Optional["DistContext"] = None) -> dict[str, float]:
    """Top-1 of the deepest classifier, every auxiliary head and their ensemble (mean of logits)."""
    accuracies = _accuracies(graph, graph.head_logits, dataset, spec, rt, True, dist)
    return {("val_top1/deepest" if k == "output" else f"val_top1/{k}"): v for k, v in accuracies.items()}


def embeddings(graph: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, y)``: the student's embedding (``graph.embed``) of every image in order, in float32 on the device."""
    parts, labels = [], []
    for out, y in _eval_logits(graph, lambda x: {"e": graph.embed(x)}, dataset, spec, rt):
        parts.append(out["e"].float())
        labels.append(y)
    return torch.cat(parts), torch.cat(labels)


def knn_top1(bank: torch.Tensor, bank_y: torch.Tensor, queries: torch.Tensor, y: torch.Tensor, k: int = 20,
             chunk: int = 1024) -> float:
    """k-NN top-1: each query takes the majority label of its ``k`` most cosine-similar bank rows.

    Ties between labels go to the label whose neighbours have the larger summed similarity."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    classes = int(max(bank_y.max(), y.max())) + 1
    correct = 0
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        onehot = F.one_hot(bank_y[idx], classes).float()  # (Q, k, C)
        votes = onehot.sum(1) + 1e-3 * (onehot * sim.clamp(-1, 1)[..., None]).sum(1) / k
        correct += int((votes.argmax(1) == y[start:start + chunk]).sum())
    return correct / max(1, len(queries))


def linear_probe_top1(train_e: torch.Tensor, train_y: torch.Tensor, test_e: torch.Tensor, test_y: torch.Tensor,
                      steps: int = 100, weight_decay: float = 1e-4) -> float:
    """Top-1 of a logistic regression fitted on frozen train embeddings (standardised; full-batch L-BFGS from zeros).

    Deterministic: no random initialisation, no data order."""
    mean, std = train_e.mean(0), train_e.std(0).clamp_min(1e-6)
    xs, xt = (train_e - mean) / std, (test_e - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    with torch.enable_grad():
        w = torch.zeros(xs.shape[1], classes, device=xs.device, requires_grad=True)
        b = torch.zeros(classes, device=xs.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(xs @ w + b, train_y) + weight_decay * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(1) == test_y).float().mean())


def embedding_metrics(graph: nn.Module, train: Dataset, test: Dataset, spec: Spec, rt: Runtime) -> dict[str, float]:
    """``val_knn``, ``val_linear_probe`` and ``val_map`` as ``spec.eval.metrics`` asks, with the train split as the
    bank (the retrieval database of ``map``)."""
    wanted = [m for m in spec.eval.metrics if m in ("knn", "linear_probe", "map")]
    if not wanted:
        return {}
    bank, bank_y = embeddings(graph, train, spec, rt)
    queries, y = embeddings(graph, test, spec, rt)
    out = {}
    if "knn" in wanted:
        out["val_knn"] = knn_top1(bank, bank_y, queries, y, k=spec.eval.knn_k)
    if "linear_probe" in wanted:
        out["val_linear_probe"] = linear_probe_top1(bank, bank_y, queries, y)
    if "map" in wanted:
        out["val_map"] = mean_average_precision(queries, y, bank, bank_y)
    return out
