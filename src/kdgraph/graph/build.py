"""Build a DistillGraph from a Spec and live models: trace, check every pair, choose adapters, wire loss terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from kdgraph.align import (AlignmentError, ChannelSelect, FeatureShape, PairAdapters, align_pair, find_producing_conv,
                           l1_channel_mask, parse_projector)
from kdgraph.errors import SpecError, with_key
from kdgraph.graph.distill_graph import DistillGraph
from kdgraph.graph.heads import embedding_layer, head_terms
from kdgraph.graph.inputs import InputAdapter
from kdgraph.graph.lookup import Teachers, feature, layer, named_teachers, trace_pair_models
from kdgraph.graph.loss_modules import batchnorm_before, build_inputs, build_loss_module
from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.graph.terms import Term, TermKind, adapter_key
from kdgraph.losses import PAIR_KINDS, LossKind, LossRecord, get_loss
from kdgraph.spec.load import format_key
from kdgraph.spec.schema import PairSpec, Spec
from kdgraph.trace import FeatureExtractor, LayerInfo, LayerMap

__all__ = ["TapReport", "PairReport", "BuiltGraph", "build_graph", "prune_masks", "teacher_dtype"]


@dataclass
class TapReport:
    """One tap of a pair: the student and teacher layers and the adapters between them."""

    student: LayerInfo
    teacher: LayerInfo
    adapters: PairAdapters


@dataclass
class PairReport:
    """What was decided for one pair: the layers it taps and the adapters inserted on each side (kept in the graph's
    ``student_adapters`` / ``teacher_adapters`` under ``key``). ``student``, ``teacher`` and ``adapters`` are the
    first tap's; ``taps`` lists every tap of a loss over several taps per model (one entry otherwise)."""

    index: int
    label: str
    spec: PairSpec
    teacher_name: str
    student: LayerInfo
    teacher: LayerInfo
    adapters: PairAdapters
    key: str = ""
    taps: list[TapReport] = field(default_factory=list)


def prune_masks(reports: list[PairReport]) -> dict[str, list[int]]:
    """The kept teacher channels of every pruned pair (InDistill), by pair label."""
    return {r.label: m.indices.tolist() for r in reports for tap in r.taps for m in tap.adapters.teacher.modules()
            if isinstance(m, ChannelSelect)}


@dataclass
class BuiltGraph:
    """What :func:`build_graph` returns: the graph, what was decided for each pair, and the layer maps it checked."""

    graph: DistillGraph
    pairs: list[PairReport]
    student_map: LayerMap
    teacher_maps: dict[str, LayerMap] = field(default_factory=dict)

    @property
    def teacher_map(self) -> Optional[LayerMap]:
        """The first (usually only) teacher's layer map."""
        return next(iter(self.teacher_maps.values()), None)


def _prune_indices(pair: PairSpec, teacher: nn.Module, s_info: LayerInfo, tap: str) -> torch.Tensor:
    """InDistill: keep the teacher filters with the largest L1 (or L2) norm, as many as the student has channels."""
    try:
        _, conv = find_producing_conv(teacher, tap)
    except ValueError as err:
        raise AlignmentError(f"projector prune needs a conv layer at the teacher tap: {err}") from None
    if s_info.channels is None or s_info.channels > conv.out_channels:
        raise AlignmentError(f"projector prune keeps student-width channels ({s_info.channels}) of the teacher's "
                             f"{conv.out_channels}; the student must be narrower")
    return l1_channel_mask(conv.weight.detach(), keep=s_info.channels, criterion=pair.prune_criterion)


def _unique_labels(pairs: list[PairSpec]) -> list[str]:
    labels = [p.label for p in pairs]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _pair_teacher(spec: Spec, pair_ref: Optional[str]) -> str:
    return pair_ref or next(iter(spec.teacher_specs), "teacher")


def _logits_term(spec: Spec, student_map: LayerMap, teacher_maps: dict[str, LayerMap]) -> Term:
    """The logit term: the logit loss's record called with the spec's temperature and parameters."""
    lg = spec.distill.logits
    source = _pair_teacher(spec, lg.teacher_model)
    k_s, k_t = student_map.logit_count, teacher_maps[source].logit_count
    if k_s is None or k_t is None or k_s != k_t:
        raise SpecError(f"logit distillation needs (B, K) outputs of equal width; the student gives {k_s} and "
                        f"the teacher {k_t} classes. Set num_classes in the models' kwargs, or remove "
                        "distill.logits", key="distill.logits", line=spec.line_of("distill", "logits"))
    record = get_loss(lg.loss.name, LossKind.LOGIT)
    _check_labels(record, spec, ("distill", "logits", "loss"))
    params = dict(lg.loss.params, **({"temperature": lg.temperature} if "temperature" in record.params else {}))
    return Term(label="logits", kind=TermKind.LOGITS, weight=lg.weight, teacher_name=source, fn=record.fn,
                params=params, record=record, warmup_epochs=lg.warmup_epochs, standardise=lg.standardise)


def _check_labels(record: LossRecord, spec: Spec, path: tuple) -> None:
    """A loss that takes the batch's hard labels cannot train on mixed soft targets (``data.mix``)."""
    if "labels" in record.inputs and spec.data.mix.name != "none":
        raise SpecError(f"loss {record.name!r} at {format_key(path)} needs each image's hard label, but data.mix: "
                        f"{spec.data.mix.name} trains on mixed soft targets; use mix: none with this loss",
                        key="data.mix", line=spec.line_of("data", "mix"))


def _tap(spec: Spec, i: int, j: Optional[int], pair: PairSpec, record: LossRecord, maps: tuple[LayerMap, LayerMap],
         teacher: nn.Module) -> TapReport:
    """Tap ``j`` of pair ``i`` (None: its only one): both layers looked up, the adapters its loss needs."""
    base = ("distill", "pairs", i)
    which = () if j is None else (j,)
    s_name, t_name = pair.student_taps[j or 0], pair.teacher_taps[j or 0]
    infos = []
    for side, name, layer_map in (("student", s_name, maps[0]), ("teacher", t_name, maps[1])):
        path = base + (side, *which)
        key = format_key(path)
        infos.append(feature(layer_map, layer(layer_map, name, key, spec, path), key, spec, path))
    s_info, t_info = infos
    try:
        pruning = parse_projector(pair.projector)[0] == "prune"
        prune = _prune_indices(pair, teacher, s_info, t_name) if pruning else None
        adapters = align_pair(FeatureShape(s_info.shape, s_info.layout), FeatureShape(t_info.shape, t_info.layout),
                              projector=pair.projector, normalize=pair.normalize, pool=pair.pool, resize=pair.resize,
                              prune_indices=prune, loss=record)
    except AlignmentError as err:
        raise with_key(SpecError(f"{s_name} {s_info.shape} cannot be matched to {t_name} {t_info.shape}: {err}"),
                       f"distill.pairs[{i}]", spec.line_of(*base)) from None
    return TapReport(s_info, t_info, adapters)


def _pair_term(spec: Spec, i: int, label: str, key: str, student_map: LayerMap, teacher_maps: dict[str, LayerMap],
               teachers: dict[str, nn.Module], num_data: Optional[int]) -> tuple[Term, PairReport, Optional[nn.Module]]:
    """One pair checked against both maps, its adapters chosen from what its loss needs, its loss module built, and
    its term."""
    pair, base = spec.distill.pairs[i], ("distill", "pairs", i)
    t_name = _pair_teacher(spec, pair.teacher_model)
    record = get_loss(pair.loss.name, PAIR_KINDS)
    _check_labels(record, spec, (*base, "loss"))
    maps = (student_map, teacher_maps[t_name])
    taps = [_tap(spec, i, j if record.several else None, pair, record, maps, teachers[t_name])
            for j in range(len(pair.student_taps))]
    fn_params, module_params = record.split(pair.loss.params)
    module = None
    if record.module is not None:
        try:
            bns = ([batchnorm_before(teachers[t_name], maps[1], name) for name in pair.teacher_taps]
                   if "teacher_batchnorm" in record.inputs else None)
            inputs = build_inputs(record, num_data=num_data, seed=spec.runtime.seed * 7919 + 101 * (i + 1),
                                  teacher_batchnorm=bns)
            module = build_loss_module(record, [tap.adapters.student_out for tap in taps],
                                       [tap.adapters.teacher_out for tap in taps], module_params, inputs)
        except (ValueError, TypeError) as err:
            raise SpecError(f"loss {record.name!r}: {err}", key=format_key((*base, "loss")),
                            line=spec.line_of(*base, "loss")) from None
    term = Term(label=label, kind=TermKind.PAIR, weight=pair.weight, fn=record.fn, params=fn_params,
                student_taps=tuple(pair.student_taps), teacher_taps=tuple(pair.teacher_taps), index=i,
                teacher_name=t_name, record=record, adapter=key, warmup_epochs=pair.warmup_epochs)
    first = taps[0]
    report = PairReport(i, label, pair, t_name, first.student, first.teacher, first.adapters, key, taps)
    return term, report, module


def _unique_keys(labels: list[str]) -> list[str]:
    """Adapter keys of the pair labels, made unique where two labels differ only by a dot and an underscore."""
    keys = [adapter_key(label) for label in labels]
    return [f"{key}#{i}" if keys.count(key) > 1 else key for i, key in enumerate(keys)]


def _objective_terms(spec: Spec, terms: list[Term], modules: nn.ModuleDict) -> list[Term]:
    """One objective term per pair a stage names in ``objectives`` (its loss module's own objective)."""
    named = {name for stage in spec.train.stages for name in stage.objectives}
    out = []
    for term in [t for t in terms if t.kind is TermKind.PAIR]:
        if term.label in named or term.label.removeprefix("pair:") in named:
            if not callable(getattr(modules[term.adapter], "objective", None)):
                raise SpecError(f"loss {term.record.name!r} has a module without an objective of its own; remove the "
                                "pair from train.stages[].objectives", key="train.stages",
                                line=spec.line_of("train", "stages"))
            out.append(Term(label=f"{term.label}/objective", kind=TermKind.OBJECTIVE, weight=1.0,
                            student_taps=term.student_taps, teacher_taps=term.teacher_taps, index=term.index,
                            teacher_name=term.teacher_name, record=term.record, adapter=term.adapter))
    return out


_PRECISIONS = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(tspec) -> Optional[torch.dtype]:
    """The dtype ``teacher.precision`` keeps a frozen teacher in (None: float32 under the runtime's autocast)."""
    return _PRECISIONS[tspec.precision]


def build_graph(spec: Spec, student: nn.Module, teacher: Teachers, input_shape: tuple[int, ...],
                student_map: Optional[LayerMap] = None, teacher_maps: Optional[dict[str, LayerMap]] = None,
                num_data: Optional[int] = None, inputs: Optional[dict[str, InputAdapter]] = None,
                own: frozenset[str] = frozenset()) -> BuiltGraph:
    """Check every pair against the layer maps and assemble the graph; errors name the spec key and YAML line.

    ``num_data`` (the training set's size) is what a loss asking for it (CRD) gets; ``inputs``: each teacher's
    :class:`InputAdapter` (its layer map is traced at the shape it gives); ``own``: the teachers kdgraph built from
    the spec (cast in place for ``teacher.precision``; others are copied first)."""
    teachers = named_teachers(spec, teacher)
    inputs = inputs or {}
    if student_map is None or teacher_maps is None:
        shapes = {name: adapter.out_shape for name, adapter in inputs.items()}
        student_map, teacher_maps = trace_pair_models(spec, student, teachers, input_shape, shapes)
    reports: list[PairReport] = []
    terms: list[Term] = []
    student_adapters, teacher_adapters, loss_modules = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
    if spec.train.ce_weight > 0:
        terms.append(Term(label="ce", kind=TermKind.CE, weight=spec.train.ce_weight))
    if spec.distill.logits is not None:
        terms.append(_logits_term(spec, student_map, teacher_maps))
    labels = _unique_labels(spec.distill.pairs)
    for i, (label, key) in enumerate(zip(labels, _unique_keys(labels))):
        term, report, module = _pair_term(spec, i, label, key, student_map, teacher_maps, teachers, num_data)
        several = term.record.several
        student_adapters[key] = nn.ModuleList(t.adapters.student for t in report.taps) if several else \
            report.adapters.student
        teacher_adapters[key] = nn.ModuleList(t.adapters.teacher for t in report.taps) if several else \
            report.adapters.teacher
        if module is not None:
            loss_modules[key] = module
        terms.append(term)
        reports.append(report)
    terms += _objective_terms(spec, terms, loss_modules)
    if spec.teacher == "self":
        terms += head_terms(spec, student, student_map, student_adapters)
    if not terms:
        raise SpecError("nothing to train: train.ce_weight is 0 and there are no distill terms", key="train.ce_weight",
                        line=spec.line_of("train", "ce_weight"))
    student_taps = {tap for t in terms if not t.kind.is_head for tap in t.student_taps}
    student_taps |= {t.student_tap for t in terms if t.kind.is_head}
    student_taps |= {t.teacher_tap for t in terms if t.kind is TermKind.HEAD_FEATURE}
    embedding = embedding_layer(spec, student, student_map)
    if embedding != "output" and any(m != "top1" for m in spec.eval.metrics):
        student_taps.add(embedding)
    student_ex = FeatureExtractor(student, sorted(student_taps), student_map, keep_output=True)
    logits_from = next((t.teacher_name for t in terms if t.kind is TermKind.LOGITS), None)
    extractors = {}
    for name, model in teachers.items():
        taps = sorted({tap for t in terms if t.kind in (TermKind.PAIR, TermKind.OBJECTIVE) and t.teacher_name == name
                       for tap in t.teacher_taps})
        tspec = spec.teacher_specs.get(name)
        # a sharded teacher keeps its classifier when it has one: its top-1 and the agreement metrics then need no
        # second, whole copy of it
        classifies = teacher_maps[name].logit_count is not None and teacher_maps[name].logit_count == \
            student_map.logit_count
        keep = logits_from == name or (tspec is not None and tspec.shard == "fsdp" and classifies)
        if taps or keep:
            dtype = teacher_dtype(tspec) if tspec is not None else None
            extractors[name] = FrozenTeacher(FeatureExtractor(model, taps, teacher_maps[name], keep_output=keep),
                                             input=inputs.get(name), dtype=dtype, own=name in own)
    graph = DistillGraph(student_ex, extractors, student_adapters, teacher_adapters, terms, embedding=embedding,
                         loss_modules=loss_modules, num_data=num_data, inputs=inputs)
    return BuiltGraph(graph, reports, student_map, teacher_maps)
