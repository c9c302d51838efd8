"""Names in a spec checked against layer maps: which teacher module is which, tracing every model at the data's
input shape, and a layer name (or a pair's feature) looked up with its spec key and YAML line on failure."""

from __future__ import annotations

from typing import Optional, Union

from torch import nn

from kdgraph.errors import SpecError, with_key
from kdgraph.spec.schema import Spec
from kdgraph.trace import LayerInfo, LayerMap, UnknownLayerError, trace_model
from kdgraph.trace.layer_map import channels_last

__all__ = ["Teachers", "named_teachers", "trace_pair_models", "layer", "feature"]

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


def trace_pair_models(spec: Spec, student: nn.Module, teacher: Teachers, input_shape: tuple[int, ...],
                      teacher_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> tuple[LayerMap, dict[str, LayerMap]]:
    """Layer maps of the student and every teacher, probed at the data's input shape (a teacher at the shape its
    input adapter gives it, ``teacher_shapes``, when it has one)."""
    student_map = _trace(student, input_shape, spec.student.model, ("student", ("student",)), spec)
    maps = {}
    for name, model in named_teachers(spec, teacher).items():
        tspec = spec.teacher_specs.get(name)
        where = spec.teacher_key(name) if tspec else ("teacher", ("teacher",))
        shape = (teacher_shapes or {}).get(name, input_shape)
        maps[name] = _trace(model, shape, tspec.model if tspec else name, where, spec, converted=shape != input_shape)
    return student_map, maps


def _trace(model: nn.Module, input_shape: tuple[int, ...], name: str, where: tuple[str, tuple], spec: Spec,
           converted: bool = False) -> LayerMap:
    try:
        return trace_model(model, input_shape, name)
    except ValueError as err:  # the probe forward failed: almost always the data's shape vs the model's
        if converted:  # the teacher's own input (teacher.input or its published size) does not fit it
            key, path = f"{where[0]}.input", (*where[1], "input")
        else:
            key, path = ("data.image_size", ("data", "image_size")) if spec.data.image_size else where
        raise SpecError(f"{err}. The data gives inputs of shape {input_shape}; pick a model (or model kwargs such "
                        "as in_chans or img_size) or an image size that fit", key=key,
                        line=spec.line_of(*path)) from None


def layer(layer_map: LayerMap, name: str, key: str, spec: Spec, path: tuple) -> LayerInfo:
    """``layer_map[name]``; an unknown name is a SpecError at ``key`` (YAML path ``path``) listing the nearest."""
    try:
        return layer_map[name]
    except UnknownLayerError as err:
        raise with_key(SpecError(str(err)), key, spec.line_of(*path)) from None


def feature(layer_map: LayerMap, info: LayerInfo, key: str, spec: Spec, path: tuple) -> LayerInfo:
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
