"""Pictures for the CLI: the paired layer maps of a spec and the training curves of a run (matplotlib, optional).

matplotlib is an optional extra (``pip install 'kdgraph[plot]'``); without it every function here raises
``PlotError`` before doing any work. Only the object-oriented API is used (``Figure``, no pyplot), so drawing
never touches a global backend or opens a window.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from kdgraph.errors import KdgraphError
from kdgraph.trace import LayerInfo, LayerMap
from kdgraph.trace.suggest import block_list, stage_layers

__all__ = ["PlotError", "PlotPair", "require_matplotlib", "check_path", "pair_label", "plot_rows", "plot_layer_maps",
           "plot_plan", "read_metrics", "plot_metrics"]

FORMATS = (".png", ".svg", ".pdf")
# Modules that never change a feature (at inference) and only crowd the picture; shown when tapped.
_QUIET_KINDS = ("Identity", "Dropout", "DropPath", "Flatten")


class PlotError(KdgraphError):
    """A picture cannot be drawn: matplotlib missing, an unknown file type, or nothing to draw."""


@dataclass(frozen=True)
class PlotPair:
    """One line of the layer-map picture: a teacher layer, a student layer and the text written on the line."""

    teacher: str
    student: str
    label: str


def require_matplotlib() -> None:
    """Raise ``PlotError`` telling how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("drawing needs matplotlib, which is not installed: pip install 'kdgraph[plot]'") from None


def check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"{str(path)!r}: the picture is written as {', '.join(FORMATS)}; choose one of those suffixes")
    return path


def _shape(info: LayerInfo) -> str:
    return "×".join(str(v) for v in info.shape) if info.shape else "-"


def plot_rows(layer_map: LayerMap, tapped: Sequence[str] = ()) -> list[LayerInfo]:
    """The layers drawn for one model: its stage-level layers (``kdgraph.trace.suggest.stage_layers``) with a
    transformer's block list spelled out, its other top-level modules (heads, stems), and every tapped layer,
    in execution order."""
    order = {name: i for i, name in enumerate(layer_map.names())}
    blocks = block_list(layer_map)
    parents = {b.name.rsplit(".", 1)[0] for b in blocks}
    chosen: dict[str, LayerInfo] = {}
    for info in stage_layers(layer_map):
        if info.name in parents:
            chosen.update((b.name, b) for b in blocks)
        else:
            chosen[info.name] = info
    for info in layer_map.layers:
        if "." not in info.name and info.kind[:1].isupper() and info.kind not in _QUIET_KINDS \
                and info.name not in parents:
            chosen.setdefault(info.name, info)
    for name in tapped:
        info = layer_map[name]  # ``NAME:output`` is listed as NAME, ``NAME:input`` under its own name
        chosen[info.name] = info
    base = lambda name: order.get(name.partition(":")[0], len(order))  # noqa: E731
    # ``NAME:input`` is drawn just before NAME
    return sorted(chosen.values(), key=lambda info: (base(info.name), not info.name.endswith(":input")))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout=None)


def plot_layer_maps(path: str | Path, student_map: LayerMap, teacher_map: Optional[LayerMap] = None,
                    pairs: Sequence[PlotPair] = (), title: str = "") -> Path:
    """Teacher (left) and student (right) as columns of stage-level layers with shapes; pairs as labelled lines."""
    require_matplotlib()
    path = check_path(path)
    columns: list[tuple[str, LayerMap, list[LayerInfo]]] = []
    if teacher_map is not None:
        columns.append(("teacher", teacher_map, plot_rows(teacher_map, [p.teacher for p in pairs])))
    columns.append(("student", student_map, plot_rows(student_map, [p.student for p in pairs] if teacher_map else [])))
    n_rows = max(len(rows) for _, _, rows in columns)
    box_w, gap = 3.4, 3.6
    width = box_w * len(columns) + gap * (len(columns) - 1) + 0.6
    height = 1.05 + 0.36 * n_rows
    fig = _figure(width, height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    tapped_t = {teacher_map[p.teacher].name for p in pairs} if teacher_map is not None else set()
    tapped_s = {student_map[p.student].name for p in pairs} if teacher_map is not None else set()
    centre: dict[tuple[str, str], tuple[float, float]] = {}
    top = height - 0.95
    for c, (role, layer_map, rows) in enumerate(columns):
        x0 = 0.3 + c * (box_w + gap)
        ax.text(x0 + box_w / 2, height - 0.35, f"{role}: {layer_map.model}", ha="center", va="center",
                fontsize=10, fontweight="bold")
        ax.text(x0 + box_w / 2, height - 0.62, f"input {'×'.join(map(str, layer_map.input_shape))}, "
                f"{len(layer_map)} layers ({layer_map.method})", ha="center", va="center", fontsize=7, color="0.35")
        # Every column spans the same height, so pair lines between a long and a short column stay readable.
        step = 0.36 * (n_rows - 1) / (len(rows) - 1) if len(rows) > 1 else 0
        tapped = tapped_t if role == "teacher" else tapped_s
        for r, info in enumerate(rows):
            y = top - r * step
            hit = info.name in tapped
            ax.add_patch(_box(x0, y, box_w, hit))
            ax.text(x0 + 0.08, y, info.name, ha="left", va="center", fontsize=8,
                    fontweight="bold" if hit else "normal", family="monospace")
            stride = f"  /{info.stride}" if info.stride else ""
            ax.text(x0 + box_w - 0.08, y, f"{_shape(info)}{stride}", ha="right", va="center", fontsize=7,
                    color="0.25", family="monospace")
            centre[(role, info.name)] = (x0, y)
    for i, pair in enumerate(pairs):
        if teacher_map is None:
            break
        tx, ty = centre[("teacher", teacher_map[pair.teacher].name)]
        sx, sy = centre[("student", student_map[pair.student].name)]
        x_a, x_b = tx + box_w, sx
        ax.plot([x_a, x_b], [ty, sy], color=f"C{i % 10}", lw=1.6)
        ax.plot([x_a, x_b], [ty, sy], ls="none", marker="o", ms=3.5, color=f"C{i % 10}")
        # Labels of crossing lines would sit on one point: stagger them along their line.
        t = 0.5 + (((i % 3) - 1) * 0.18 if len(pairs) > 2 else 0)
        ax.text(x_a + t * (x_b - x_a), ty + t * (sy - ty), textwrap.fill(pair.label, 36), ha="center", va="center",
                fontsize=7, color=f"C{i % 10}",
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": f"C{i % 10}", "lw": 0.8})
    if title:
        fig.suptitle(title, fontsize=9, y=0.005, va="bottom", color="0.35")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _box(x0: float, y: float, w: float, hit: bool):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x0, y - 0.13), w, 0.26, boxstyle="round,pad=0.02,rounding_size=0.05",
                          fc="#d9f2d9" if hit else "#f3f3f3", ec="#2e7d32" if hit else "0.6", lw=1.0 if hit else 0.6)


def pair_label(student_steps: Sequence[str], teacher_steps: Sequence[str], loss: str, weight: float) -> str:
    """``conv1x1 → mse ×1`` (student adapters, then teacher-side adapters in brackets, the loss and its weight)."""
    parts = [" → ".join(student_steps) or "identity"]
    if teacher_steps:
        parts.append(f"[teacher: {' → '.join(teacher_steps)}]")
    return f"{' '.join(parts)} → {loss} ×{weight:g}"


def plot_plan(plan, path: str | Path) -> Path:
    """The layer-map picture of a resolved spec (``kdgraph.plan.Plan``).

    With several teachers the picture shows the first one and its pairs (the title names it)."""
    first = next(iter(plan.teacher_maps), None)
    pairs = [PlotPair(r.teacher.name, r.student.name,
                      pair_label(r.adapters.student_steps, r.adapters.teacher_steps, r.spec.loss.name, r.spec.weight))
             for r in plan.pairs if r.teacher_name == first]
    which = f" (teacher {first!r} of {len(plan.teacher_maps)})" if len(plan.teacher_maps) > 1 else ""
    return plot_layer_maps(path, plan.student_map, plan.teacher_map, pairs,
                           title=f"kdgraph inspect: {plan.spec.name}{which}")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (one JSON object per epoch); ``PlotError`` when missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"{str(path)!r} not found: is {str(path.parent)!r} a kdgraph run directory?")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise PlotError(f"{path}:{n} is not JSON ({err.msg})") from None
    if not rows:
        raise PlotError(f"{str(path)!r} has no rows yet: no epoch has finished")
    return rows


def plot_metrics(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training curves per epoch: every ``loss/`` term, train/val top-1, and the learning rate."""
    require_matplotlib()
    path = check_path(path)
    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
    marker = "o" if len(rows) < 30 else None

    def series(ax, key: str, label: str, **style: Any) -> None:
        points = [(e, row[key]) for e, row in zip(epochs, rows) if isinstance(row.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=label, marker=marker, ms=3, **style)

    loss_keys = sorted({k for row in rows for k in row if k.startswith("loss/")}, key=lambda k: (k != "loss/total", k))
    for key in loss_keys:
        series(axes[0], key, key[5:], lw=2.2 if key == "loss/total" else 1.2)
    axes[0].set_title("loss terms")
    series(axes[1], "train_top1", "train")
    series(axes[1], "val_top1", "val")
    series(axes[1], "val_knn", "val k-NN")
    series(axes[1], "val_linear_probe", "val linear probe")
    axes[1].set_title("accuracy")
    series(axes[2], "lr", "lr")
    axes[2].set_title("learning rate (start of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines and ax is not axes[2]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
