"""Build a DistillGraph from a Spec and live models: trace, check every pair, choose adapters, wire loss terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from kdgraph.align.heads import AuxHead
from kdgraph.align import (AlignmentError, ChannelSelect, FeatureShape, PairAdapters, align_pair, find_producing_conv,
                           l1_channel_mask, parse_projector)
from kdgraph.errors import SpecError, with_key
from kdgraph.graph.distill import DistillGraph, Term
from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.losses import PAIR_KINDS, LossKind, LossRecord, get_loss
from kdgraph.spec.load import format_key
from kdgraph.spec.schema import PairSpec, Spec
from kdgraph.trace import FeatureExtractor, LayerInfo, LayerMap, UnknownLayerError, trace_model
from kdgraph.trace.layer_map import channels_last

__all__ = ["PairReport", "BuiltGraph", "trace_pair_models", "build_graph"]


@dataclass
class PairReport:
    """What was decided for one pair: the layers it taps and the adapters inserted on each side."""

    index: int
    label: str
    spec: PairSpec
    teacher_name: str
    student: LayerInfo
    teacher: LayerInfo
    adapters: PairAdapters


def prune_masks(reports: list["PairReport"]) -> dict[str, list[int]]:
    """The kept teacher channels of every pruned pair (InDistill), by pair label."""
    return {r.label: m.indices.tolist() for r in reports for m in r.adapters.teacher.modules()
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


Teachers = Union[nn.Module, dict[str, nn.Module], None]


def named_teachers(spec: Spec, teacher: Teachers) -> dict[str, nn.Module]:
    """Teachers by the spec's names; a lone module takes the single teacher's name."""
    if teacher is None or (isinstance(teacher, dict) and not teacher):
        return {}
    names = list(spec.teacher_specs)
    if not names:
        raise SpecError("a teacher module was passed, but the spec has no teacher to use it for: add `teacher:` "
                        "(or `teachers:`) to the spec, or leave the teacher out", key="teacher")
    if isinstance(teacher, nn.Module):
        return {names[0]: teacher}
    if not isinstance(teacher, dict):
        raise SpecError(f"teacher must be an nn.Module or a dict of them, not {type(teacher).__name__}", key="teacher")
    for name, module in teacher.items():
        if not isinstance(module, nn.Module):
            raise SpecError(f"teacher[{name!r}] must be an nn.Module, not {type(module).__name__}", key="teachers")
        if name not in names:
            raise SpecError(f"the spec has no teacher named {name!r} (its teachers: {', '.join(names)}); name the "
                            "modules as the spec's `teachers[].name`", key="teachers")
    return dict(teacher)


def trace_pair_models(spec: Spec, student: nn.Module, teacher: Teachers,
                      input_shape: tuple[int, ...]) -> tuple[LayerMap, dict[str, LayerMap]]:
    """Layer maps of the student and every teacher, probed at the data's input shape."""
    student_map = _trace(student, input_shape, spec.student.model, ("student", ("student",)), spec)
    maps = {}
    for name, model in named_teachers(spec, teacher).items():
        tspec = spec.teacher_specs.get(name)
        where = spec.teacher_key(name) if tspec else ("teacher", ("teacher",))
        maps[name] = _trace(model, input_shape, tspec.model if tspec else name, where, spec)
    return student_map, maps


def _trace(model: nn.Module, input_shape: tuple[int, ...], name: str, where: tuple[str, tuple], spec: Spec) -> LayerMap:
    try:
        return trace_model(model, input_shape, name)
    except ValueError as err:  # the probe forward failed: almost always the data's shape vs the model's
        key, path = ("data.image_size", ("data", "image_size")) if spec.data.image_size else where
        raise SpecError(f"{err}. The data gives inputs of shape {input_shape}; pick a model (or model kwargs such "
                        "as in_chans or img_size) or an image size that fit", key=key,
                        line=spec.line_of(*path)) from None


def _layer(layer_map: LayerMap, name: str, key: str, spec: Spec, path: tuple) -> LayerInfo:
    try:
        return layer_map[name]
    except UnknownLayerError as err:
        raise with_key(SpecError(str(err)), key, spec.line_of(*path)) from None


def _feature(layer_map: LayerMap, info: LayerInfo, key: str, spec: Spec, path: tuple) -> LayerInfo:
    """``info`` if it is a map, tokens or a vector; a pair cannot use anything else (``"other"`` layout)."""
    if info.layout != "other":
        return info
    what = (f"a {len(info.shape)}-D feature {info.shape}" if info.shape
            else "not a batch tensor (a size, constant or tuple)")
    if channels_last(info.shape, layer_map.input_shape):
        what = f"a channels-last (H, W, C) map {info.shape}, which kdgraph does not convert"
    near = _nearest_feature(layer_map, info.name.partition(":")[0])
    raise SpecError(f"{info.name} in {layer_map.model} is {what}; a pair needs a (C, H, W) map, (N, D) tokens or a "
                    f"(D,) vector" + (f"; try {near}" if near else ""), key=key, line=spec.line_of(*path))


def _nearest_feature(layer_map: LayerMap, name: str) -> Optional[str]:
    """The enclosing module of ``name`` if it is a feature, else the closest feature before it, else after it."""
    usable = [info.name for info in layer_map.layers if info.layout != "other"]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in usable:
            return ".".join(parts[:i])
    names = layer_map.names()
    at = names.index(name) if name in names else len(names)
    before = [n for n in names[:at] if n in usable]
    after = [n for n in names[at + 1:] if n in usable]
    return before[-1] if before else (after[0] if after else None)


def _prune_indices(pair: PairSpec, teacher: nn.Module, s_info: LayerInfo) -> torch.Tensor:
    """InDistill: keep the teacher filters with the largest L1 (or L2) norm, as many as the student has channels."""
    try:
        _, conv = find_producing_conv(teacher, pair.teacher)
    except ValueError as err:
        raise AlignmentError(f"projector prune needs a conv layer at the teacher tap: {err}") from None
    if s_info.channels is None or s_info.channels > conv.out_channels:
        raise AlignmentError(f"projector prune keeps student-width channels ({s_info.channels}) of the teacher's "
                             f"{conv.out_channels}; the student must be narrower")
    return l1_channel_mask(conv.weight.detach(), keep=s_info.channels, criterion=pair.prune_criterion)


def _pair_loss(pair: PairSpec, spec: Spec, base: tuple) -> LossRecord:
    """The pair's loss record; a record asking for what pairs cannot give yet is refused with its spec key."""
    record = get_loss(pair.loss.name, PAIR_KINDS)
    missing = [what for what, wanted in (("several taps per model", record.taps != 1),
                                         ("a loss-side module", record.module is not None),
                                         (f"step inputs ({', '.join(sorted(record.inputs))})", bool(record.inputs)))
               if wanted]
    if missing:
        raise SpecError(f"loss {record.name!r} needs {' and '.join(missing)}, which kdgraph's pairs do not provide "
                        "yet", key=format_key((*base, "loss")), line=spec.line_of(*base, "loss"))
    return record


def _unique_labels(pairs: list[PairSpec]) -> list[str]:
    labels = [p.label for p in pairs]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _last_linear(model: nn.Module) -> Optional[tuple[str, nn.Linear]]:
    """The model's last ``nn.Linear`` (its classifier, for the models kdgraph knows), with its name."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _default_deep_layers(student: nn.Module, student_map: LayerMap) -> tuple[str, str, nn.Linear]:
    """The deepest stage's map (last map layer with more than one position) and the classifier's input."""
    classifier = _last_linear(student)
    if classifier is None:
        raise SpecError("self-distillation needs a student with a final nn.Linear classifier", key="student")
    maps = [info.name for info in student_map.layers if info.layout == "map" and info.shape[1] * info.shape[2] > 1]
    if not maps:
        raise SpecError("the student has no (C, H, W) feature map to attach heads to", key="self_distill.heads")
    return maps[-1], f"{classifier[0]}:input", classifier[1]


def _add_heads(spec: Spec, student: nn.Module, student_map: LayerMap, terms: list[Term],
               adapters: nn.ModuleDict) -> None:
    """Auxiliary heads and their three terms each: soft CE to the deepest logits, CE, feature distance."""
    sd = spec.self_distill
    deep_map, deep_feature, classifier = _default_deep_layers(student, student_map)
    deep_map = _layer(student_map, sd.deep_map or deep_map, "self_distill.deep_map", spec, ("self_distill", "deep_map"))
    feature = _layer(student_map, sd.deep_feature or deep_feature, "self_distill.deep_feature", spec,
                     ("self_distill", "deep_feature"))
    for i, name in enumerate(sd.heads):
        key, path = f"self_distill.heads[{i}]", ("self_distill", "heads", i)
        info = _layer(student_map, name, key, spec, path)
        if info.layout != "map":
            raise SpecError(f"heads attach to (C, H, W) maps; {name} is {info.layout} {info.shape}", key=key,
                            line=spec.line_of(*path))
        adapters[f"head{i}"] = AuxHead(info.shape, deep_map.shape, classifier.out_features, feature.shape[-1],
                                       kind=sd.head, attention=sd.attention)
        common = dict(student_tap=info.name, teacher_tap=feature.name, index=i)
        terms.append(Term(label=f"head:{name}/soft", kind="head_soft", weight=sd.alpha,
                          params={"temperature": sd.temperature, "t_squared": sd.t_squared}, **common))
        terms.append(Term(label=f"head:{name}/ce", kind="head_ce", weight=1 - sd.alpha, **common))
        if sd.feature_weight > 0:
            terms.append(Term(label=f"head:{name}/feature", kind="head_feat", weight=sd.feature_weight, **common))


def _pair_teacher(spec: Spec, pair_ref: Optional[str]) -> str:
    return pair_ref or next(iter(spec.teacher_specs), "teacher")


def build_graph(spec: Spec, student: nn.Module, teacher: Teachers, input_shape: tuple[int, ...],
                student_map: Optional[LayerMap] = None, teacher_maps: Optional[dict[str, LayerMap]] = None) -> BuiltGraph:
    """Check every pair against the layer maps and assemble the graph; errors name the spec key and YAML line."""
    teachers = named_teachers(spec, teacher)
    if student_map is None or teacher_maps is None:
        student_map, teacher_maps = trace_pair_models(spec, student, teachers, input_shape)
    reports: list[PairReport] = []
    terms: list[Term] = []
    student_adapters, teacher_adapters = nn.ModuleDict(), nn.ModuleDict()
    if spec.train.ce_weight > 0:
        terms.append(Term(label="ce", kind="ce", weight=spec.train.ce_weight))
    logits_from = None
    if spec.distill.logits is not None:
        lg = spec.distill.logits
        logits_from = _pair_teacher(spec, lg.teacher_model)
        k_s, k_t = student_map.logit_count, teacher_maps[logits_from].logit_count
        if k_s is None or k_t is None or k_s != k_t:
            raise SpecError(f"logit distillation needs (B, K) outputs of equal width; the student gives {k_s} and "
                            f"the teacher {k_t} classes. Set num_classes in the models' kwargs, or remove "
                            "distill.logits", key="distill.logits", line=spec.line_of("distill", "logits"))
        record = get_loss(lg.loss.name, LossKind.LOGIT)
        params = dict(lg.loss.params, **({"temperature": lg.temperature} if "temperature" in record.params else {}))
        terms.append(Term(label="logits", kind="logits", weight=lg.weight, teacher_name=logits_from, fn=record.fn,
                          params=params, record=record))
    for i, (pair, label) in enumerate(zip(spec.distill.pairs, _unique_labels(spec.distill.pairs))):
        base = ("distill", "pairs", i)
        t_name = _pair_teacher(spec, pair.teacher_model)
        s_key, t_key = f"distill.pairs[{i}].student", f"distill.pairs[{i}].teacher"
        s_info = _feature(student_map, _layer(student_map, pair.student, s_key, spec, base + ("student",)), s_key,
                          spec, base + ("student",))
        t_info = _feature(teacher_maps[t_name], _layer(teacher_maps[t_name], pair.teacher, t_key, spec,
                                                       base + ("teacher",)), t_key, spec, base + ("teacher",))
        record = _pair_loss(pair, spec, base)
        try:
            prune = (_prune_indices(pair, teachers[t_name], s_info) if parse_projector(pair.projector)[0] == "prune"
                     else None)
            adapters = align_pair(FeatureShape(s_info.shape, s_info.layout), FeatureShape(t_info.shape, t_info.layout),
                             projector=pair.projector, normalize=pair.normalize, pool=pair.pool, resize=pair.resize,
                             prune_indices=prune, loss=record)
        except AlignmentError as err:
            raise with_key(SpecError(f"{pair.student} {s_info.shape} cannot be matched to {pair.teacher} "
                                     f"{t_info.shape}: {err}"), f"distill.pairs[{i}]", spec.line_of(*base)) from None
        student_adapters[str(i)] = adapters.student
        teacher_adapters[str(i)] = adapters.teacher
        terms.append(Term(label=label, kind="pair", weight=pair.weight, fn=record.fn, params=pair.loss.params,
                          student_tap=pair.student, teacher_tap=pair.teacher, index=i, teacher_name=t_name,
                          record=record))
        reports.append(PairReport(i, label, pair, t_name, s_info, t_info, adapters))
    if spec.teacher == "self":
        _add_heads(spec, student, student_map, terms, student_adapters)
    if not terms:
        raise SpecError("nothing to train: train.ce_weight is 0 and there are no distill terms", key="train.ce_weight",
                        line=spec.line_of("train", "ce_weight"))
    student_taps = {p.student for p in spec.distill.pairs} | {t.student_tap for t in terms if t.student_tap}
    student_taps |= {t.teacher_tap for t in terms if t.kind == "head_feat"}
    embedding = embedding_layer(spec, student, student_map)
    if embedding != "output" and any(m != "top1" for m in spec.eval.metrics):
        student_taps.add(embedding)
    student_ex = FeatureExtractor(student, sorted(student_taps), student_map, keep_output=True)
    extractors = {}
    for name, model in teachers.items():
        taps = sorted({t.teacher_tap for t in terms if t.kind == "pair" and t.teacher_name == name})
        if taps or logits_from == name:
            extractors[name] = FrozenTeacher(FeatureExtractor(model, taps, teacher_maps[name],
                                                              keep_output=logits_from == name))
    graph = DistillGraph(student_ex, extractors, student_adapters, teacher_adapters, terms,
                         embedding=embedding)
    return BuiltGraph(graph, reports, student_map, teacher_maps)


def embedding_layer(spec: Spec, student: nn.Module, student_map: LayerMap) -> str:
    """The student layer k-NN / linear-probe evaluation reads: ``eval.embedding``, else its last Linear's input."""
    if spec.eval.embedding:
        return _layer(student_map, spec.eval.embedding, "eval.embedding", spec, ("eval", "embedding")).name
    classifier = _last_linear(student)
    if classifier is not None:
        return f"{classifier[0]}:input"
    if any(m != "top1" for m in spec.eval.metrics):
        raise SpecError("the student has no Linear layer whose input could serve as the embedding for "
                        f"{', '.join(spec.eval.metrics)}; set eval.embedding to a layer `kdgraph inspect` lists",
                        key="eval.embedding", line=spec.line_of("eval"))
    return "output"
