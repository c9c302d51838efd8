"""Propose feature pairs for two traced models, stage by stage (``kdgraph inspect TEACHER STUDENT --suggest``).

The rule, in the order it is applied:

1. **Stages.** A model's stage-level layers are its top-level submodules that contain other layers (``layer1``,
   ``stem``, ``block2``). A top-level container whose own sub-containers differ in shape is a *stage list*
   (ConvNeXt ``stages``, EfficientNet ``blocks``, torchvision ``features``) and is replaced by those children
   (``stages.0`` … ``stages.3``). A model with no top-level container falls back to its top-level modules.
2. **Conv nets: equal stride.** Stage layers that are (C, H, W) maps are grouped by stride (input H // output H;
   a global pool, 1×1 out of a larger input, is not a stage). Each group is represented by its last layer,
   preferring a numbered stage (``layer4``, ``stages.3``, ``blocks.6``) over a trailing head module
   (``conv_head``, ``bn2``). Teacher and student groups with the same stride are paired; a stride only one model
   has is left out (the zoo teacher's ``layer1`` at stride 1 has no student partner: ``fmnist_cnn`` pools inside
   ``block1``).
3. **Transformers (or a conv net against a transformer): depth fraction.** When either model has no strided
   stages, each model's units are its *block list* — the container with the most same-shaped token children
   (timm ``blocks.N``, torchvision ``encoder.layers.encoder_layer_N``) — or its stride-group representatives.
   Units at 1/4, 1/2, 3/4 and 1 of each model's depth are paired (fewer fractions when a model has fewer than
   four units): the unit at fraction f of D units is number ceil(f·D) (1-based).

The result is a starting point, checked against both maps like any hand-written pair; it never looks at weights.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from kdgraph.trace.layer_map import LayerInfo, LayerMap

__all__ = ["stage_layers", "block_list", "suggest_pairs", "format_pairs_yaml", "pair_rule"]

_NUMBERED = re.compile(r".*\d$")
_PLAIN_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _is_container(name: str, names: set[str]) -> bool:
    prefix = name + "."
    return any(other.startswith(prefix) for other in names)


def _is_module(info: LayerInfo) -> bool:
    # fx function and method nodes are named after the function (``add``, ``getitem``, ``flatten``);
    # modules are reported by class name, which is capitalised.
    return info.kind[:1].isupper()


def _children(layer_map: LayerMap, parent: str) -> list[LayerInfo]:
    """Direct sub-layers of ``parent`` (``""``: top level), in execution order."""
    prefix = parent + "." if parent else ""
    depth = prefix.count(".")
    return [info for info in layer_map.layers
            if info.name.startswith(prefix) and info.name.count(".") == depth and _is_module(info)]


def _is_global_pool(info: LayerInfo, input_shape: tuple[int, ...]) -> bool:
    return info.layout == "map" and info.shape[1:] == (1, 1) and len(input_shape) == 3 and input_shape[1] > 1


def stage_layers(layer_map: LayerMap) -> list[LayerInfo]:
    """The stage-level layers of a map (rule 1 of the module docstring), in execution order."""
    names = set(layer_map.names())
    top = _children(layer_map, "")
    containers = [info for info in top if _is_container(info.name, names)]
    if not containers:
        return top
    out: list[LayerInfo] = []
    for info in containers:
        subs = [c for c in _children(layer_map, info.name) if _is_container(c.name, names)]
        if len(subs) >= 2 and len({c.shape for c in subs}) > 1:
            out.extend(subs)
        else:
            out.append(info)
    return out


def block_list(layer_map: LayerMap) -> list[LayerInfo]:
    """The longest run of sibling containers sharing one token shape (a transformer's blocks); [] if none."""
    names = set(layer_map.names())
    parents = [""] + [info.name for info in layer_map.layers if _is_container(info.name, names)]
    best: list[LayerInfo] = []
    for parent in parents:
        kids = [c for c in _children(layer_map, parent) if _is_container(c.name, names) and c.layout == "tokens"]
        if len(kids) < 2:
            continue
        shapes: dict[tuple[int, ...], list[LayerInfo]] = {}
        for kid in kids:
            shapes.setdefault(kid.shape, []).append(kid)
        run = max(shapes.values(), key=len)
        if len(run) > len(best):
            best = run
    return best


def _stride_groups(layer_map: LayerMap) -> dict[int, LayerInfo]:
    """Stride → representative stage layer (rule 2), in increasing stride."""
    groups: dict[int, list[LayerInfo]] = {}
    for info in stage_layers(layer_map):
        if info.layout != "map" or not info.stride or _is_global_pool(info, layer_map.input_shape):
            continue
        groups.setdefault(info.stride, []).append(info)
    reps = {}
    for stride in sorted(groups):
        members = groups[stride]
        numbered = [m for m in members if _NUMBERED.match(m.name)]
        reps[stride] = (numbered or members)[-1]
    return reps


def _at_fractions(units: list[LayerInfo], k: int) -> list[LayerInfo]:
    return [units[max(1, math.ceil((i + 1) / k * len(units))) - 1] for i in range(k)]


def pair_rule(teacher_map: LayerMap, student_map: LayerMap) -> str:
    """``"stride"`` when both models have strided stages, else ``"depth"`` (see the module docstring)."""
    return "stride" if _stride_groups(teacher_map) and _stride_groups(student_map) else "depth"


def _units(layer_map: LayerMap) -> list[LayerInfo]:
    groups = list(_stride_groups(layer_map).values())
    return groups or block_list(layer_map)


def suggest_pairs(teacher_map: LayerMap, student_map: LayerMap) -> list[dict[str, Any]]:
    """Proposed ``distill.pairs`` entries (``{"teacher": NAME, "student": NAME}``), shallowest first."""
    if pair_rule(teacher_map, student_map) == "stride":
        t_groups, s_groups = _stride_groups(teacher_map), _stride_groups(student_map)
        return [{"teacher": t_groups[s].name, "student": s_groups[s].name} for s in t_groups if s in s_groups]
    t_units, s_units = _units(teacher_map), _units(student_map)
    k = min(4, len(t_units), len(s_units))
    if k == 0:
        return []
    pairs: list[dict[str, Any]] = []
    for t, s in zip(_at_fractions(t_units, k), _at_fractions(s_units, k)):
        pair = {"teacher": t.name, "student": s.name}
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _scalar(name: str) -> str:
    return name if _PLAIN_NAME.fullmatch(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(info: Optional[LayerInfo]) -> str:
    return "×".join(str(v) for v in info.shape) if info is not None and info.shape else "-"


def format_pairs_yaml(pairs: list[dict[str, Any]], teacher_map: LayerMap, student_map: LayerMap) -> str:
    """YAML for ``distill.pairs`` with each pair's shapes (and stride) as a comment; parses with yaml.safe_load."""
    rule = pair_rule(teacher_map, student_map)
    how = "equal stride" if rule == "stride" else "depth fractions 1/4, 1/2, 3/4, 1"
    lines = [f"# {teacher_map.model} → {student_map.model}, input {_shape_of(teacher_map.input_shape)}: "
             f"paired by {how}"]
    if not pairs:
        lines.append("# no stage of one model has a partner in the other; pick pairs with `kdgraph inspect`")
        return "\n".join(lines + ["distill:", "  pairs: []"]) + "\n"
    lines += ["distill:", "  pairs:"]
    for pair in pairs:
        t, s = teacher_map[pair["teacher"]], student_map[pair["student"]]
        note = f"teacher {_shape(t)}, student {_shape(s)}"
        if rule == "stride":
            note += f", stride {t.stride}"
        lines.append(f"    - {{teacher: {_scalar(t.name)}, student: {_scalar(s.name)}}}  # {note}")
    return "\n".join(lines) + "\n"


def _shape_of(shape: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in shape)
