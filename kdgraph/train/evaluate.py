"""Evaluation: top-1 of a classifier, and of every self-distillation head, on a dataset.

With a distributed context each rank evaluates a disjoint share of the data set and the counts are summed, so
every sample is counted exactly once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from kdgraph.data import make_loader
from kdgraph.spec.schema import Spec
from kdgraph.train.runtime import Runtime

if TYPE_CHECKING:
    from kdgraph.train.distributed import DistContext

__all__ = ["top1", "head_top1"]


def _eval_logits(module: nn.Module, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: Dataset,
                 spec: Spec, rt: Runtime, world: int = 1) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(named logits, labels) per evaluation batch, under no_grad in eval mode; ``module``'s mode is restored.

    The evaluation batch is global like the training batch: each of ``world`` processes takes its share."""
    was_training = module.training
    module.eval()
    batch = max(1, (spec.data.eval_batch_size or 2 * spec.data.batch_size) // world)
    loader = make_loader(dataset, batch, train=False, seed=0, drop_last=False, num_workers=spec.data.num_workers)
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                if rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with rt.autocast():
                    logits = forward(x)
                yield logits, y
    finally:
        module.train(was_training)


def _accuracies(module: nn.Module, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: Dataset,
                spec: Spec, rt: Runtime, ensemble: bool, dist: Optional["DistContext"]) -> dict[str, float]:
    """Top-1 per named logits; with ``dist``, over this rank's share (its first ``valid`` samples) summed over ranks."""
    valid = None
    if dist is not None:
        dataset, valid = dist.eval_shard(dataset)
    correct: dict[str, int] = {}
    total = 0
    for logits, y in _eval_logits(module, forward, dataset, spec, rt, dist.world if dist is not None else 1):
        keep = len(y) if valid is None else max(0, min(len(y), valid - total))
        if ensemble:
            logits["ensemble"] = torch.stack([v.float() for v in logits.values()]).mean(0)
        for name, value in logits.items():
            correct[name] = correct.get(name, 0) + int((value[:keep].argmax(1) == y[:keep]).sum())
        total += keep
    if dist is not None:
        correct, total = dist.sum_counts(correct, total)
    return {name: count / max(1, total) for name, count in correct.items()}


def top1(model: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime, dist: Optional["DistContext"] = None) -> float:
    """Fraction of ``dataset`` whose arg-max logit is the label; the model's train/eval mode is restored."""
    return _accuracies(model, lambda x: {"output": model(x)}, dataset, spec, rt, False, dist).get("output", 0.0)


def head_top1(graph: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime,
              dist: Optional["DistContext"] = None) -> dict[str, float]:
    """Top-1 of the deepest classifier, every auxiliary head and their ensemble (mean of logits)."""
    accuracies = _accuracies(graph, graph.head_logits, dataset, spec, rt, True, dist)
    return {("val_top1/deepest" if k == "output" else f"val_top1/{k}"): v for k, v in accuracies.items()}
