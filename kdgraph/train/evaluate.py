"""Evaluation: top-1 accuracy of a classifier on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from kdgraph.data import make_loader
from kdgraph.spec.schema import Spec
from kdgraph.train.runtime import Runtime

__all__ = ["top1", "head_top1"]


@torch.no_grad()
def top1(model: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime) -> float:
    """Fraction of ``dataset`` whose arg-max logit is the label; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    batch = spec.data.eval_batch_size or 2 * spec.data.batch_size
    loader = make_loader(dataset, batch, train=False, seed=0, drop_last=False, num_workers=spec.data.num_workers)
    correct = total = 0
    try:
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / max(1, total)


@torch.no_grad()
def head_top1(graph: nn.Module, dataset: Dataset, spec: Spec, rt: Runtime) -> dict[str, float]:
    """Top-1 of the deepest classifier, every auxiliary head and their ensemble (mean of logits)."""
    was_training = graph.training
    graph.eval()
    batch = spec.data.eval_batch_size or 2 * spec.data.batch_size
    loader = make_loader(dataset, batch, train=False, seed=0, drop_last=False, num_workers=spec.data.num_workers)
    correct: dict[str, int] = {}
    total = 0
    try:
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                logits = graph.head_logits(x)
            logits["ensemble"] = torch.stack([v.float() for v in logits.values()]).mean(0)
            for name, value in logits.items():
                correct[name] = correct.get(name, 0) + int((value.argmax(1) == y).sum())
            total += len(y)
    finally:
        graph.train(was_training)
    return {("val_top1/deepest" if k == "output" else f"val_top1/{k}"): v / max(1, total) for k, v in correct.items()}
