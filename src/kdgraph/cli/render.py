"""Rendering for the CLI: layer maps, resolved plans and run summaries as rich tables."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.table import Table

from kdgraph.graph.terms import TermKind
from kdgraph.trace import LayerMap

__all__ = ["print_layer_map", "print_plan", "print_summary", "traced_json", "inputs_json", "print_inputs"]

console = Console(highlight=False, width=160)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in shape) if shape else "-"


def layer_table(layer_map: LayerMap, marks: Optional[dict[str, str]] = None) -> Table:
    marks = marks or {}
    fixed = ", ".join(f"{name}={value!r}" for name, value in layer_map.fixed_args.items())
    table = Table(title=f"{layer_map.model} — {len(layer_map.layers)} layers (traced with {layer_map.method}, "
                        f"input {_shape(layer_map.input_shape)}{', fixed ' + fixed if fixed else ''})",
                  title_justify="left")
    for column in ("name", "kind", "shape", "channels", "stride", "pair"):
        table.add_column(column, no_wrap=column == "name")
    for info in layer_map.layers:
        mark = marks.get(info.name, "")
        style = "bold green" if mark else None
        table.add_row(info.name, info.kind, _shape(info.shape), str(info.channels or "-"), str(info.stride or "-"),
                      mark, style=style)
    return table


def print_layer_map(layer_map: LayerMap, marks: Optional[dict[str, str]] = None) -> None:
    console.print(layer_table(layer_map, marks))


def traced_json(plan) -> dict:
    """How each model of a plan was traced: ``{"student": {"method", "fixed_args"}, "teachers": {name: ...}}``."""
    def one(layer_map: LayerMap) -> dict:
        return {"method": layer_map.method, "fixed_args": layer_map.fixed_args}

    return {"student": one(plan.student_map), "teachers": {name: one(m) for name, m in plan.teacher_maps.items()}}


def inputs_json(plan) -> dict:
    """What each model reads: the data's normalisation and shape, and per teacher its conversion (``[]``: none)."""
    data = plan.data
    teachers = {name: {"shape": list(a.out_shape), "mean": list(a.mean), "std": list(a.std),
                       "steps": a.steps(), "source": a.source} for name, a in plan.graph.inputs.items()}
    return {"data": {"shape": list(data.input_shape), "mean": list(data.mean), "std": list(data.std)},
            "teachers": teachers}


def print_inputs(plan) -> None:
    """One line per model: the student reads the data as it is; each teacher's conversion on the device."""
    data = plan.data
    norm = f"mean {tuple(round(v, 4) for v in data.mean)}, std {tuple(round(v, 4) for v in data.std)}"
    console.print(f"input: student reads {_shape(data.input_shape)}, {norm}")
    for name, adapter in plan.graph.inputs.items():
        if adapter.identity:
            console.print(f"input: {name} reads the student's batch unchanged (expected input from {adapter.source})")
        else:
            console.print(f"input: {name} reads {_shape(adapter.out_shape)} (from {adapter.source}): "
                          + " → ".join(adapter.steps()))


def print_plan(plan, maps: bool = True) -> None:
    """Both layer maps with the tapped layers marked, then one row per pair with the adapters inserted."""
    if maps:
        s_marks = {r.student.name: f"← {r.label}" for r in plan.pairs}
        for name, teacher_map in plan.teacher_maps.items():
            print_layer_map(teacher_map, {r.teacher.name: f"← {r.label}" for r in plan.pairs if r.teacher_name == name})
        print_layer_map(plan.student_map, s_marks)
    console.print(f"data: {plan.data.description}")
    print_inputs(plan)
    table = Table(title=f"{plan.spec.name}: loss terms", title_justify="left")
    for column in ("term", "student", "teacher", "student side", "teacher side", "loss", "weight"):
        table.add_column(column)
    for term in plan.graph.terms:
        if term.kind is TermKind.PAIR:
            continue
        if term.kind is TermKind.LOGITS:
            table.add_row(term.label, "output", "output", "", "", f"{term.record.name} T={term.params.get('temperature')}",
                          f"{term.weight:g}")
        elif term.kind.is_head:
            detail = {TermKind.HEAD_SOFT: f"soft CE T={term.params.get('temperature')} to deepest logits (detached)",
                      TermKind.HEAD_CE: "CE on labels",
                      TermKind.HEAD_FEATURE: f"‖W·h − sg({term.teacher_tap})‖"}[term.kind]
            head = plan.graph.student_adapters[term.adapter]
            table.add_row(term.label, term.student_tap, "self", f"aux head ({sum(p.numel() for p in head.parameters())}"
                          " params)", "", detail, f"{term.weight:g}")
        else:
            table.add_row(term.label, "output", "-", "", "", "labels", f"{term.weight:g}")
    several = len(plan.teacher_maps) > 1
    for r in plan.pairs:
        teacher = f"{r.teacher_name}: " * several + f"{r.teacher.name} {_shape(r.teacher.shape)}"
        table.add_row(r.label, f"{r.student.name} {_shape(r.student.shape)}", teacher,
                      " → ".join(r.adapters.student_steps) or "identity", " → ".join(r.adapters.teacher_steps) or "identity",
                      r.spec.loss.name, f"{r.spec.weight:g}")
    console.print(table)


def print_summary(result) -> None:
    s = result.summary
    table = Table(title=f"{s['name']}: summary", title_justify="left")
    table.add_column("model")
    table.add_column("top-1", justify="right")
    for key in [k for k in s if k.startswith("teacher_top1")]:
        table.add_row("teacher" + key[len("teacher_top1"):].replace("/", " "), f"{s[key]:.2%}")
    if s.get("student_top1") is not None:
        table.add_row("student (distilled)" if any(k.startswith(("teacher_top1", "baseline_")) for k in s) else "student",
                      f"{s['student_top1']:.2%}")
    if "baseline_top1" in s:
        table.add_row("student alone (same budget)", f"{s['baseline_top1']:.2%}")
    console.print(table)
    for metric, label in (("knn", "k-NN top-1"), ("linear_probe", "linear probe")):
        if s.get(f"student_{metric}") is not None:
            alone = f" (alone: {s[f'baseline_{metric}']:.2%})" if s.get(f"baseline_{metric}") is not None else ""
            console.print(f"student {label}: {s[f'student_{metric}']:.2%}{alone}")
    if "baseline_top1" in s and s.get("student_top1") is not None:
        gain = s["student_top1"] - s["baseline_top1"]
        console.print(f"distillation gain: {gain * 100:+.2f} points")
    if result.run_dir is not None:
        console.print(f"run dir: {result.run_dir} (student.safetensors, metrics.jsonl, checkpoints/)")
