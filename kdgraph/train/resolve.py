"""Resolve a spec into live objects (data, models, graph) without writing anything: shared by train/validate/inspect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from kdgraph.data import DataBundle
from kdgraph.errors import KdgraphError
from kdgraph.graph import GraphPlan, build_graph
from kdgraph.graph.build import logit_count
from kdgraph.spec.schema import Spec
from kdgraph.train.runtime import Runtime, resolve_runtime

__all__ = ["ResolvedPlan", "resolve_plan"]


@dataclass
class ResolvedPlan:
    spec: Spec
    data: DataBundle
    student: nn.Module
    teacher: Optional[nn.Module]
    graph_plan: GraphPlan
    runtime: Runtime

    def pairs_json(self) -> list[dict[str, Any]]:
        return [{"label": r.label, "student": r.student.name, "teacher": r.teacher.name,
                 "student_shape": list(r.student.shape), "teacher_shape": list(r.teacher.shape),
                 "student_steps": r.plan.student_steps, "teacher_steps": r.plan.teacher_steps,
                 "loss": r.spec.loss.name, "weight": r.spec.weight} for r in self.graph_plan.pairs]


def resolve_plan(spec: Spec, student: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None) -> ResolvedPlan:
    """Data, models (weights loaded), layer maps and the graph; raises user errors naming spec keys."""
    from kdgraph.train.loop import build_data, build_models

    from kdgraph.train.loop import _has_conv

    try:
        resolve_runtime(spec.runtime)  # device/precision errors before any heavy work
    except KdgraphError as err:
        err.line = err.line or spec.line_of(*err.key.split("."))
        raise
    data = build_data(spec.data, spec.runtime.seed, spec.line_of("data"))
    if len(data.train) < spec.data.batch_size:
        raise KdgraphError(f"the training set has {len(data.train)} images, fewer than one batch of "
                           f"{spec.data.batch_size}; lower data.batch_size", key="data.batch_size",
                           line=spec.line_of("data", "batch_size"))
    student, teacher = build_models(spec, student, teacher)
    graph_plan = build_graph(spec, student, teacher, data.input_shape)
    classes = logit_count(student, data.input_shape)
    if classes is not None and classes < data.num_classes and spec.train.ce_weight > 0:
        raise KdgraphError(f"the student has {classes} outputs but the data has {data.num_classes} classes; set "
                           f"num_classes: {data.num_classes} in student.kwargs", key="student",
                           line=spec.line_of("student"))
    runtime = resolve_runtime(spec.runtime, conv_net=_has_conv(student, teacher))
    return ResolvedPlan(spec, data, student, teacher, graph_plan, runtime)
