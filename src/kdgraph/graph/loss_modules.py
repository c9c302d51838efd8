"""What a loss record asks of the graph besides its tensors: its loss-side module, built once, and the run inputs
its function and its factory take (docs/architecture.md, "the loss record").

A record with ``module=factory`` gets ``factory(student, teacher, **params, **build inputs)`` built here from the
shapes after the adapters (one :class:`FeatureShape` per side, or a list of them with several taps). The graph keeps
the module in ``DistillGraph.loss_modules`` under the term's adapter key, so it is optimised with the student,
checkpointed with the adapters and saved in ``adapters.safetensors`` (``loss.KEY.*``), never in
``student.safetensors``. The build inputs (``BUILD_INPUTS``) are the training set's size, a seed of the term's own
and the teacher's BatchNorm right before each teacher tap, read from the unfolded teacher (``FrozenTeacher`` folds
BatchNorm into the convolutions, so the folded copy no longer has it).
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx, nn

from kdgraph.align import FeatureShape
from kdgraph.losses import LossRecord
from kdgraph.trace import LayerMap
from kdgraph.trace.fx import NodeIndex, trace_graph

__all__ = ["batchnorm_before", "build_inputs", "build_loss_module", "step_inputs"]

_ADDS = (operator.add, operator.iadd, torch.add)


def batchnorm_before(model: nn.Module, layer_map: LayerMap, tap: str) -> Optional[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm whose output ``tap`` is, in the unfolded ``model``: the tap's own node when it is a BatchNorm,
    or, through a residual sum, the BatchNorm ending its first term (``layer3.1.relu_1:input`` is ``bn2(...) +
    shortcut``: ``layer3.1.bn2``, as OFD's official code reads it). None for anything else (a ReLU's output, a
    model traced with hooks)."""
    if layer_map.method != "fx":
        return None
    graph, qualnames = trace_graph(model, training=False, fixed=layer_map.fixed_args)
    node = NodeIndex(graph, qualnames).resolve(tap)
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            return module if isinstance(module, nn.modules.batchnorm._BatchNorm) else None
        if (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and
                                                                     node.target in ("add", "add_")):
            node = node.args[0]
            continue
        return None
    return None


def build_inputs(record: LossRecord, *, num_data: Optional[int], seed: int,
                 teacher_batchnorm: Optional[list[Optional[nn.Module]]]) -> dict[str, Any]:
    """The build inputs ``record``'s factory asks for, under its parameter names; a missing one is a ValueError."""
    available = {"num_data": num_data, "seed": seed, "teacher_batchnorm": teacher_batchnorm}
    out = {}
    for name, param in record.inputs.items():
        if name not in available:
            continue
        if available[name] is None:
            raise ValueError(f"loss {record.name!r} needs the training set's size, which this graph was built without "
                             "(build_graph(..., num_data=N))")
        out[param] = available[name]
    return out


def build_loss_module(record: LossRecord, student: list[FeatureShape], teacher: list[FeatureShape],
                      params: dict[str, Any], inputs: dict[str, Any]) -> nn.Module:
    """``record.module(student, teacher, **params, **inputs)``; a single tap's shapes are passed as they are.

    The factory's ``ValueError`` / ``TypeError`` (a width it cannot map, a BatchNorm it cannot find) is the caller's
    to report with the pair's spec key."""
    s, t = (student, teacher) if record.several else (student[0], teacher[0])
    module = record.module(s, t, **params, **inputs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"loss {record.name!r}: its module factory returned {type(module).__name__}, not an nn.Module")
    return module


def step_inputs(record: LossRecord, y: torch.Tensor, index: Optional[torch.Tensor],
                num_data: Optional[int]) -> dict[str, Any]:
    """The step inputs ``record``'s function takes: ``labels`` (``y`` when it holds class indices), ``index``,
    ``num_data``. A missing one is a ValueError naming the loss."""
    out: dict[str, Any] = {}
    for name, param in record.inputs.items():
        if name == "labels":
            if y.is_floating_point():
                raise ValueError(f"loss {record.name!r} needs hard labels, but the batch has soft targets "
                                 "(data.mix); it cannot be used with mixup/cutmix")
            out[param] = y
        elif name == "index":
            if index is None:
                raise ValueError(f"loss {record.name!r} needs the batch's data-set positions: call the graph with "
                                 "index=... (the trainer passes the loader's)")
            out[param] = index
        elif name == "num_data":
            if num_data is None:
                raise ValueError(f"loss {record.name!r} needs the training set's size (build_graph(..., num_data=N))")
            out[param] = num_data
    return out
