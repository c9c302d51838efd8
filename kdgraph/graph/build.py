"""Build a DistillGraph from a Spec and live models: trace, check every pair, choose adapters, wire loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from kdgraph.align import AlignmentError, FeatureShape, PairPlan, plan_pair
from kdgraph.errors import SpecError, with_key
from kdgraph.graph.distill import DistillGraph, Term
from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.losses import UnknownLossError, get_loss
from kdgraph.spec.schema import PairSpec, Spec
from kdgraph.trace import FeatureExtractor, LayerInfo, LayerMap, UnknownLayerError, trace_model

__all__ = ["PairReport", "GraphPlan", "trace_pair_models", "build_graph"]


@dataclass
class PairReport:
    """What was decided for one pair: the layers it taps and the adapters inserted on each side."""

    index: int
    label: str
    spec: PairSpec
    student: LayerInfo
    teacher: LayerInfo
    plan: PairPlan


@dataclass
class GraphPlan:
    graph: DistillGraph
    pairs: list[PairReport]
    student_map: LayerMap
    teacher_map: Optional[LayerMap]


def trace_pair_models(spec: Spec, student: nn.Module, teacher: Optional[nn.Module],
                      input_shape: tuple[int, ...]) -> tuple[LayerMap, Optional[LayerMap]]:
    """Layer maps of both models, probed at the data's input shape."""
    student_map = trace_model(student, input_shape, spec.student.model)
    teacher_map = trace_model(teacher, input_shape, spec.teacher.model) if teacher is not None and spec.teacher else None
    return student_map, teacher_map


def _layer(layer_map: LayerMap, name: str, key: str, spec: Spec, path: tuple) -> LayerInfo:
    try:
        return layer_map[name]
    except UnknownLayerError as err:
        raise with_key(SpecError(str(err).strip("'\"")), key, spec.line_of(*path)) from None


def _unique_labels(pairs: list[PairSpec]) -> list[str]:
    labels = [p.label for p in pairs]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def build_graph(spec: Spec, student: nn.Module, teacher: Optional[nn.Module], input_shape: tuple[int, ...],
                student_map: Optional[LayerMap] = None, teacher_map: Optional[LayerMap] = None) -> GraphPlan:
    """Check every pair against the layer maps and assemble the graph; errors name the spec key and YAML line."""
    if student_map is None or (teacher is not None and teacher_map is None):
        student_map, teacher_map = trace_pair_models(spec, student, teacher, input_shape)
    reports: list[PairReport] = []
    terms: list[Term] = []
    student_adapters, teacher_adapters = nn.ModuleDict(), nn.ModuleDict()
    if spec.train.ce_weight > 0:
        terms.append(Term(label="ce", kind="ce", weight=spec.train.ce_weight))
    if spec.distill.logits is not None:
        lg = spec.distill.logits
        terms.append(Term(label="logits", kind="logits", weight=lg.weight,
                          params={"loss": lg.loss, "temperature": lg.temperature}))
    for i, (pair, label) in enumerate(zip(spec.distill.pairs, _unique_labels(spec.distill.pairs))):
        base = ("distill", "pairs", i)
        s_info = _layer(student_map, pair.student, f"distill.pairs[{i}].student", spec, base + ("student",))
        t_info = _layer(teacher_map, pair.teacher, f"distill.pairs[{i}].teacher", spec, base + ("teacher",))
        try:
            plan = plan_pair(FeatureShape(s_info.shape, s_info.layout), FeatureShape(t_info.shape, t_info.layout),
                             projector=pair.projector, normalize=pair.normalize, pool=pair.pool, resize=pair.resize)
        except AlignmentError as err:
            raise with_key(SpecError(f"{pair.student} {s_info.shape} cannot be matched to {pair.teacher} "
                                     f"{t_info.shape}: {err}"), f"distill.pairs[{i}]", spec.line_of(*base)) from None
        try:
            fn = get_loss(pair.loss.name, kind="feature")
        except UnknownLossError as err:
            raise with_key(SpecError(str(err).strip("'\"")), f"distill.pairs[{i}].loss",
                           spec.line_of(*base, "loss")) from None
        student_adapters[str(i)] = plan.student
        teacher_adapters[str(i)] = plan.teacher
        terms.append(Term(label=label, kind="pair", weight=pair.weight, fn=fn, params=pair.loss.params,
                          student_tap=pair.student, teacher_tap=pair.teacher, index=i))
        reports.append(PairReport(i, label, pair, s_info, t_info, plan))
    if not terms:
        raise SpecError("nothing to train: train.ce_weight is 0 and there are no distill terms", key="train.ce_weight")
    needs_teacher_logits = spec.distill.logits is not None
    student_ex = FeatureExtractor(student, sorted({p.student for p in spec.distill.pairs}), student_map,
                                  keep_output=True)
    teacher_ex = None
    taps = sorted({p.teacher for p in spec.distill.pairs})
    if teacher is not None and teacher_map is not None and (taps or needs_teacher_logits):
        teacher_ex = FrozenTeacher(FeatureExtractor(teacher, taps, teacher_map, keep_output=needs_teacher_logits))
    graph = DistillGraph(student_ex, teacher_ex, student_adapters, teacher_adapters, terms)
    return GraphPlan(graph, reports, student_map, teacher_map)
