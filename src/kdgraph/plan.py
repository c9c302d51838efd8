"""The compile stage: a spec resolved into live objects (data, models, layer maps, graph, runtime), nothing
written. ``train`` trains a :class:`Plan`; ``validate``, ``inspect SPEC`` and ``train --dry-run`` print one.

This is the one meaning of "plan" in kdgraph: what a spec resolves to. (What goes between a pair's features is its
``PairAdapters``; what ``build_graph`` returns is a ``BuiltGraph``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.data import DataBundle, DataError, build_datasets, take
from kdgraph.data.loader import fetch
from kdgraph.errors import KdgraphError, located, with_key
from kdgraph.graph import BuiltGraph, DistillGraph, PairReport, build_graph
from kdgraph.graph.build import teacher_dtype
from kdgraph.graph.inputs import student_preprocessing, teacher_inputs
from kdgraph.graph.lookup import Teachers, named_teachers, trace_pair_models
from kdgraph.graph.teacher import FrozenTeacher
from kdgraph.models.preprocess import Preprocessing
from kdgraph.models import build_model
from kdgraph.models.weights import BUILTIN_DIR
from kdgraph.runtime import Runtime, resolve_runtime
from kdgraph.spec.schema import DataSpec, Spec
from kdgraph.store.replay import TeacherStore, open_store
from kdgraph.trace import FeatureExtractor, LayerMap

__all__ = ["Plan", "TeacherLogits", "resolve_plan", "build_data", "build_models", "has_conv", "plan_warnings",
           "chance_teachers", "check_logit_widths"]


class TeacherLogits(nn.Module):
    """A frozen teacher as a classifier of the data's batches: its input conversion, then its logits."""

    def __init__(self, frozen: FrozenTeacher):
        super().__init__()
        self.frozen = frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(x)["output"]


@dataclass
class Plan:
    """Everything a spec resolves to: data, models (weights loaded), layer maps, the graph and each pair's adapters,
    the runtime policy, and warnings about what resolves but is probably a mistake."""

    spec: Spec
    data: DataBundle
    student: nn.Module
    teachers: dict[str, nn.Module]
    graph: DistillGraph
    pairs: list[PairReport]
    student_map: LayerMap
    teacher_maps: dict[str, LayerMap]
    runtime: Runtime
    warnings: list[str] = field(default_factory=list)
    own_teachers: frozenset[str] = frozenset()  # built from the spec (not modules passed from Python)
    _classifiers: Optional[dict[str, nn.Module]] = field(default=None, repr=False)
    store: Optional[TeacherStore] = None
    """The teacher store the teachers read (``teacher.store``), opened and checked against this plan."""

    def teacher_classifiers(self) -> dict[str, nn.Module]:
        """Every teacher that classifies this data set (one logit per class, by its layer map) as a module from the
        data's batch to its logits, through its input conversion and precision: its ``FrozenTeacher`` when that
        keeps the output, else a whole frozen copy built once (for the teacher's top-1 and the agreement metrics)."""
        if self._classifiers is None:
            self._classifiers = {}
            for name, layer_map in self.teacher_maps.items():
                if layer_map.logit_count != self.data.num_classes:
                    continue
                frozen = self.graph.teachers.get(name)
                if frozen is None or not frozen.keep_output:
                    tspec = self.spec.teacher_specs.get(name)
                    frozen = FrozenTeacher(FeatureExtractor(self.teachers[name], [], layer_map, keep_output=True),
                                           input=self.graph.inputs.get(name),
                                           dtype=teacher_dtype(tspec) if tspec else None,
                                           own=name in self.own_teachers)
                self._classifiers[name] = TeacherLogits(frozen)
        return self._classifiers
    @property
    def teacher(self) -> Optional[nn.Module]:
        """The first (usually only) teacher."""
        return next(iter(self.teachers.values()), None)

    @property
    def teacher_map(self) -> Optional[LayerMap]:
        """The first (usually only) teacher's layer map."""
        return next(iter(self.teacher_maps.values()), None)

    def pairs_json(self) -> list[dict[str, Any]]:
        return [{"label": r.label, "student": r.student.name, "teacher": r.teacher.name, "teacher_model": r.teacher_name,
                 "student_shape": list(r.student.shape), "teacher_shape": list(r.teacher.shape),
                 "student_steps": r.adapters.student_steps, "teacher_steps": r.adapters.teacher_steps,
                 "loss": r.spec.loss.name, "weight": r.spec.weight,
                 **({"taps": [{"student": t.student.name, "teacher": t.teacher.name,
                               "student_steps": t.adapters.student_steps, "teacher_steps": t.adapters.teacher_steps}
                              for t in r.taps]} if len(r.taps) > 1 else {})} for r in self.pairs]


def build_data(cfg: DataSpec, seed: int, line: Optional[int] = None,
               student: Optional[Preprocessing] = None) -> DataBundle:
    """The train/test data sets a DataSpec names, cut to ``train_subset``/``test_subset`` when given, normalised
    (and, without ``data.image_size``, sized) for the ``student``'s expected input when it is known."""
    synthetic = cfg.dataset == "synthetic"
    student = student or Preprocessing()
    size = cfg.image_size or (student.size[0] if student.size and student.size[0] == student.size[1] else None)
    try:
        bundle = build_datasets(
            cfg.dataset, cfg.root, image_size=size, source=cfg.source, seed=seed,
            num_classes=cfg.synthetic.classes if synthetic else None,
            synthetic_size=cfg.synthetic.train_size if synthetic else None,
            channels=cfg.synthetic.channels if synthetic else None, mean=student.mean, std=student.std,
        )
    except DataError as err:
        key = "student.input" if student.mean and "normalis" in str(err) else "data"
        raise with_key(err, key, line) from None
    if cfg.train_subset:
        bundle.train = take(bundle.train, cfg.train_subset)
    if cfg.test_subset:
        bundle.test = take(bundle.test, cfg.test_subset)
    if cfg.train_subset or cfg.test_subset:
        bundle.description += f", cut to {len(bundle.train):,} train / {len(bundle.test):,} test"
    return bundle


def build_models(spec: Spec, student: Optional[nn.Module] = None,
                 teacher: Teachers = None) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The student and every teacher by name; live modules win over the spec's references (Python API)."""
    if student is not None and not isinstance(student, nn.Module):
        raise KdgraphError(f"student must be an nn.Module, not {type(student).__name__}", key="student")
    if student is None:
        try:
            student = build_model(spec.student.model, spec.student.kwargs, spec.student.weights)
        except KdgraphError as err:
            err.key, err.line = err.key or "student", err.line or spec.line_of("student")
            raise
    teachers = named_teachers(spec, teacher)
    for name, tspec in spec.teacher_specs.items():
        if name not in teachers:
            key, path = spec.teacher_key(name)
            try:
                teachers[name] = build_model(tspec.model, tspec.kwargs, tspec.weights)
            except KdgraphError as err:
                err.key, err.line = err.key or key, err.line or spec.line_of(*path)
                raise
    return student, teachers


def plan_warnings(spec: Spec, built: BuiltGraph, live_teachers: frozenset[str] = frozenset()) -> list[str]:
    """What resolves but is almost always a mistake, each naming its spec key and line: a teacher built from the
    spec without weights (random init; live modules from Python and ``teacher: self`` are the user's own), and a
    pair whose student map is upsampled onto a much finer teacher grid."""
    warnings = []
    for name, tspec in spec.teacher_specs.items():
        if tspec.weights is None and name not in live_teachers:
            key, path = spec.teacher_key(name)
            warnings.append(f"{located(f'{key}.weights', spec.line_of(*path, 'weights'))}: {tspec.model} has no "
                            f"weights, so the teacher is randomly initialised and teaches noise; "
                            f"{_weights_hint(tspec.model, tspec.kwargs, key)}")
    for report in built.pairs:
        where = located(f"distill.pairs[{report.index}]", spec.line_of("distill", "pairs", report.index))
        warnings += [f"{where}: {report.label}: {text}" for text in report.adapters.warnings]
    return warnings


def _weights_hint(model: str, kwargs: dict, key: str) -> str:
    scheme, _, name = model.partition(":")
    if scheme == "kdgraph" and not kwargs and (BUILTIN_DIR / f"{name}.safetensors").is_file():
        return f"set {key}.weights: builtin (the zoo's trained weights)"
    if scheme in ("timm", "torchvision", "hf"):
        return f"set {key}.weights to a safetensors file of your trained teacher, or pretrained (published weights)"
    own = " (if the factory loads its own weights, this warning does not apply)" if scheme == "python" else ""
    return f"set {key}.weights to a safetensors file of your trained teacher{own}"


def has_conv(*models: Optional[nn.Module]) -> bool:
    """Whether any of the models holds a Conv2d (channels_last pays only for conv nets)."""
    return any(isinstance(m, nn.Conv2d) for model in models if model is not None for m in model.modules())


def _check_last_batch(spec: Spec, images: int, student: nn.Module) -> None:
    """With ``data.drop_last: false`` a last batch of one image would stop a BatchNorm student mid-epoch."""
    if spec.data.drop_last or images % spec.data.batch_size != 1:
        return
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        raise KdgraphError(f"with data.drop_last: false the last batch of each epoch holds 1 of the {images} training "
                           "images, and the student's BatchNorm cannot train on a single image; set data.drop_last: "
                           "true or change data.batch_size", key="data.drop_last", line=spec.line_of("data", "drop_last"))


def resolve_plan(spec: Spec, student: Optional[nn.Module] = None, teacher: Teachers = None, *,
                 read_store: bool = True) -> Plan:
    """Data, models (weights loaded), layer maps and the graph, and the teacher store checked against them
    (``read_store=False``: not opened, as ``kdgraph teach`` writes it); raises user errors naming spec keys."""

    try:
        resolve_runtime(spec.runtime)  # device/precision errors before any heavy work
    except KdgraphError as err:
        err.line = err.line or spec.line_of(*err.key.split("."))
        raise
    _check_teachers(spec)
    data = build_data(spec.data, spec.runtime.seed, spec.line_of("data"), _student_input(spec))
    if not data.provides.indexable:
        raise KdgraphError(f"{data.description}: kdgraph trains on data it can index by position (the seeded order, "
                           "resuming mid-epoch, data-parallel shards and the teacher cache all need it); this source "
                           "streams its samples", key="data.dataset", line=spec.line_of("data", "dataset"))
    if len(data.train) < spec.data.batch_size:
        raise KdgraphError(f"the training set has {len(data.train)} images, fewer than one batch of "
                           f"{spec.data.batch_size}; lower data.batch_size", key="data.batch_size",
                           line=spec.line_of("data", "batch_size"))
    student, teachers = build_models(spec, student, teacher)
    _check_last_batch(spec, len(data.train), student)
    if spec.runtime.precision == "fp64":  # before tracing: the teacher's BatchNorm is folded in float64 too
        for model in (student, *teachers.values()):
            model.double()
    live = frozenset(named_teachers(spec, teacher))
    inputs, input_warnings = teacher_inputs(spec, data.mean, data.std, data.input_shape, live, data.own_mean,
                                            data.own_std)
    own = frozenset(teachers) - live
    student_map, teacher_maps = trace_pair_models(spec, student, teachers, data.input_shape,
                                                  {name: adapter.out_shape for name, adapter in inputs.items()})
    check_logit_widths(spec, student_map, teacher_maps, data.num_classes)
    built = build_graph(spec, student, teachers, data.input_shape, student_map, teacher_maps,
                        num_data=len(data.train), inputs=inputs, own=own)
    if spec.runtime.precision == "fp64":
        built.graph.to(torch.float64)  # the adapters
    runtime = resolve_runtime(spec.runtime, conv_net=has_conv(student, *teachers.values()))
    store = open_store(spec, data, built.graph, built.teacher_maps, teachers) if read_store else None
    plan = Plan(spec, data, student, teachers, built.graph, built.pairs, built.student_map, built.teacher_maps, runtime,
                plan_warnings(spec, built, live) + input_warnings, own_teachers=own, store=store)
    plan.warnings += chance_teachers(plan, live)
    return plan


CHANCE_SAMPLE = 256
"""How many training images :func:`chance_teachers` classifies with each teacher passed from Python."""


def chance_teachers(plan: Plan, names: frozenset[str]) -> list[str]:
    """A warning for each teacher of ``names`` (modules passed from Python) whose top-1 on ``CHANCE_SAMPLE``
    training images, spread over the split, is no better than chance: always answering their most frequent class,
    plus three binomial standard deviations. kdgraph cannot tell whether a module it did not load is trained; a
    module that classifies the data at chance either is not (random init teaches noise) or has other classes than the
    data's, and a trained one clears the bar by far. Only teachers with one logit per class are measured, and none
    that a teacher store replays."""
    names = [n for n in names if plan.teacher_maps[n].logit_count == plan.data.num_classes]
    if not names or plan.store is not None:
        return []
    n = len(plan.data.train)
    x, y = fetch(plan.data.train, torch.linspace(0, n - 1, min(n, CHANCE_SAMPLE)).round().long().unique())
    chance = torch.bincount(y).max().item() / len(y)
    if chance >= 1.0:
        return []
    bar = chance + 3 * math.sqrt(chance * (1 - chance) / len(y))
    if plan.spec.runtime.precision == "fp64":
        x = x.double()
    warnings = []
    for name in names:
        classifier = plan.teacher_classifiers()[name]
        device = next(iter(classifier.parameters()), torch.empty(0)).device
        try:
            with torch.no_grad():
                top1 = (classifier(x.to(device)).argmax(1).cpu() == y).float().mean().item()
        except (RuntimeError, TypeError, ValueError):  # advisory: a module that cannot run here fails where it is used
            continue
        if top1 <= bar:
            key, _ = plan.spec.teacher_key(name)
            warnings.append(f"{key}: the module passed from Python classifies {len(y)} training images at {top1:.1%} "
                            f"top-1, no better than chance ({chance:.1%}, always their most frequent class): it looks "
                            "untrained, and a random-init teacher teaches noise (or its classes are not the data's); "
                            "pass it with its trained weights loaded, e.g. create_model(\"kdgraph:fmnist_resnet\", "
                            "weights=\"builtin\") for a zoo teacher")
    return warnings


def check_logit_widths(spec: Spec, student_map: LayerMap, teacher_maps: dict[str, LayerMap], classes: int) -> None:
    """The student must give one logit per class where its output is read as class scores (the CE on the labels,
    the logits term, top-1 evaluation), and so must the teacher whose logits the logits term reads. Anything else
    trains silently: a timm model without ``num_classes`` is a 1000-way classifier of 3-class data. Outputs read by
    nothing (SimReg with ``ce_weight: 0`` and k-NN evaluation) may have any width; a model whose output is no
    ``(B, K)`` tensor is left to the checks of what reads it."""
    readers = [why for cond, why in ((spec.train.ce_weight > 0, "train.ce_weight > 0 trains them on the labels"),
                                     (spec.distill.logits is not None, "distill.logits distils them"),
                                     ("top1" in spec.eval.metrics, "eval.metrics scores their top-1")) if cond]
    models = [("student", ("student",), spec.student, student_map)]
    if spec.distill.logits is not None:
        name = spec.distill.logits.teacher_model or next(iter(spec.teacher_specs), None)
        if name in teacher_maps:
            models.append((*spec.teacher_key(name), spec.teacher_specs[name], teacher_maps[name]))
    for key, path, mspec, layer_map in models if readers else ():
        width = layer_map.logit_count
        if width is None or width == classes:
            continue
        fix = (f"pass a module with {classes} outputs" if mspec.model.startswith("live:") else
               f"set {'num_labels' if mspec.model.startswith('hf:') else 'num_classes'}: {classes} in {key}.kwargs")
        raise KdgraphError(f"{mspec.model} gives {width} logits but the data has {classes} classes, and "
                           f"{' and '.join(readers) if key == 'student' else 'distill.logits distils them'}: a model "
                           f"whose outputs are read as class scores must give one logit per class; {fix}",
                           key=key, line=spec.line_of(*path))


def _student_input(spec: Spec) -> Optional[Preprocessing]:
    """The student's expected input; its ``input.size`` must agree with ``data.image_size`` when both are given
    (the data is produced at the student's size)."""
    student = student_preprocessing(spec)
    cfg = spec.student.input
    if cfg is not None and cfg.size is not None and spec.data.image_size is not None and student.size != (
            spec.data.image_size, spec.data.image_size):
        raise KdgraphError(f"student.input.size {cfg.size} differs from data.image_size {spec.data.image_size}; the "
                           "data is made at the student's size, so give one of them", key="student.input.size",
                           line=spec.line_of("student", "input", "size"))
    if spec.data.image_size is not None and student is not None:  # the data's size wins over published metadata
        student = Preprocessing(student.mean, student.std, None, student.interpolation, student.source)
    return student


def _check_teachers(spec: Spec) -> None:
    """``teacher.precision`` against the runtime: half precision needs float32 batches (not fp64), fp16 a GPU."""
    for name, tspec in spec.teacher_specs.items():
        key, path = spec.teacher_key(name)
        if tspec.precision in ("bf16", "fp16") and spec.runtime.precision == "fp64":
            raise KdgraphError(f"{key}.precision {tspec.precision} contradicts runtime.precision fp64 (everything in "
                               "float64); set one of them differently", key=f"{key}.precision",
                               line=spec.line_of(*path, "precision"))
        if tspec.precision == "fp16" and spec.runtime.device == "cpu":
            raise KdgraphError(f"{key}.precision fp16 needs a CUDA device; use bf16 on CPU", key=f"{key}.precision",
                               line=spec.line_of(*path, "precision"))
