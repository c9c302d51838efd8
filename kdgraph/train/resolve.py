"""Resolve a spec into live objects (data, models, graph) without writing anything: shared by train/validate/inspect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from kdgraph.data import DataBundle
from kdgraph.graph import GraphPlan, build_graph
from kdgraph.spec.schema import Spec

__all__ = ["ResolvedPlan", "resolve_plan"]


@dataclass
class ResolvedPlan:
    spec: Spec
    data: DataBundle
    student: nn.Module
    teacher: Optional[nn.Module]
    graph_plan: GraphPlan

    def pairs_json(self) -> list[dict[str, Any]]:
        return [{"label": r.label, "student": r.student.name, "teacher": r.teacher.name,
                 "student_shape": list(r.student.shape), "teacher_shape": list(r.teacher.shape),
                 "student_steps": r.plan.student_steps, "teacher_steps": r.plan.teacher_steps,
                 "loss": r.spec.loss.name, "weight": r.spec.weight} for r in self.graph_plan.pairs]


def resolve_plan(spec: Spec, student: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None) -> ResolvedPlan:
    """Data, models (weights loaded), layer maps and the graph; raises user errors naming spec keys."""
    from kdgraph.train.loop import build_data, build_models

    data = build_data(spec.data, spec.runtime.seed, spec.line_of("data"))
    student, teacher = build_models(spec, student, teacher)
    return ResolvedPlan(spec, data, student, teacher, build_graph(spec, student, teacher, data.input_shape))
