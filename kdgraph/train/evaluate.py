"""Evaluation: top-1 of a classifier, and of every self-distillation head, on a dataset."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from kdgraph.data import make_loader
from kdgraph.spec.schema import Spec
from kdgraph.train.runtime import Runtime

__all__ = ["top1", "head_top1"]


def _eval_logits(module: nn.Module, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], dataset: Dataset,
                 spec: Spec, rt: Runtime) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(named logits, labels) per evaluation batch, under no_grad in eval mode; ``module``'s mode is restored."""
    was_training = module.training
    module.eval()
    batch = spec.data.eval_batch_size or 2 * spec.data.batch_size
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


def _accuracies(batches: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]], ensemble: bool) -> dict[str, float]:
    correct: dict[str, int] = {}
    total = 0
    for logits, y in batches:
        if ensemble:
            logits["ensemble"] = torch.stack([v.float() for v in logits.values()]).mean(0)
        for name, value in logits.items():
            correct[name] = correct.get(name, 0) + int((value.argmax(1) == y).sum())
        total += len(y)
    return {name: count / max(1, total) for name, count in correct.items()}


def top1(model: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime) -> float:
    """Fraction of ``dataset`` whose arg-max logit is the label; the model's train/eval mode is restored."""
    batches = _eval_logits(model, lambda x: {"output": model(x)}, dataset, spec, rt)
    return _accuracies(batches, ensemble=False).get("output", 0.0)


def head_top1(graph: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime) -> dict[str, float]:
    """Top-1 of the deepest classifier, every auxiliary head and their ensemble (mean of logits)."""
    accuracies = _accuracies(_eval_logits(graph, graph.head_logits, dataset, spec, rt), ensemble=True)
    return {("val_top1/deepest" if k == "output" else f"val_top1/{k}"): v for k, v in accuracies.items()}
