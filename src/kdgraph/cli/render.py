"""Rendering for the CLI: layer maps, resolved plans and run summaries as rich tables, fitted to the terminal.

A table is printed whole when it fits the terminal's width; else without borders and with short headers; else, on
a terminal too narrow for that, as one record per row (``name  header value  header value``) wrapped between its
fields. Output to a file or a pipe is laid out ``PIPE_WIDTH`` wide (or ``COLUMNS`` wide when that is set), so a
log keeps each row on one line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from kdgraph.graph.terms import TermKind
from kdgraph.session.progress import join_fields
from kdgraph.trace import LayerMap

__all__ = ["print_layer_map", "print_plan", "print_summary", "traced_json", "inputs_json", "print_inputs", "Sheet",
           "show", "PIPE_WIDTH"]

PIPE_WIDTH = 160
"""Columns of output written to a file or a pipe without ``COLUMNS``: wide enough for every table kdgraph prints."""


def _console() -> Console:
    """stdout at the terminal's width (``COLUMNS`` wins); a file or a pipe ``PIPE_WIDTH`` wide. Made per print, so
    the width is the one of the moment."""
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, width=PIPE_WIDTH if piped else None)


@dataclass
class Sheet:
    """A table's content, to be laid out for the width there is (:func:`show`): ``short`` gives headers a shorter
    name for narrow layouts, ``styles`` one style per row (None: plain), ``right`` the right-justified columns."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    styles: list[Optional[str]] = field(default_factory=list)
    short: dict[str, str] = field(default_factory=dict)
    right: tuple[str, ...] = ()
    no_wrap: tuple[str, ...] = ()
    squeeze: dict[str, int] = field(default_factory=dict)

    def add_row(self, *cells: str, style: Optional[str] = None) -> None:
        self.rows.append([str(c) for c in cells])
        self.styles.append(style)

    def table(self, compact: bool = False, squeezed: bool = False) -> Table:
        """The rich table: boxed; ``compact``: no borders, short headers, no empty columns; ``squeezed``: the
        ``squeeze`` columns cut to their width there (``SelectAdaptiveP…``)."""
        table = Table(title=self.title, title_justify="left", **({"box": None, "padding": (0, 1), "pad_edge": False,
                                                                   "show_edge": False} if compact else {}))
        kept = [i for i in range(len(self.columns)) if not compact or any(row[i] for row in self.rows)]
        for column in (self.columns[i] for i in kept):
            cut = self.squeeze.get(column) if squeezed else None
            table.add_column(self.short.get(column, column) if compact else column,
                             justify="right" if column in self.right else "left",
                             no_wrap=column in self.no_wrap or cut is not None, max_width=cut, overflow="ellipsis")
        for row, style in zip(self.rows, self.styles):
            table.add_row(*(row[i] for i in kept), style=style)
        return table

    def records(self, width: Optional[int]) -> list[Text]:
        """One record per row: its first cell, then ``header value`` for every other cell that is not empty, wrapped
        between fields at ``width``. A row whose first cell is empty continues the record above (indented)."""
        lines = [Text(self.title)]
        for row, style in zip(self.rows, self.styles):
            first, rest = row[0], [f"{self.short.get(c, c)} {v}" for c, v in zip(self.columns[1:], row[1:]) if v]
            if first:
                texts = join_fields([first, *rest], width)
            else:  # another tap of the record above
                texts = ["    " + t.lstrip() for t in join_fields(rest, width - 4 if width else None)]
            lines += [Text(t, style=style or "") for t in texts]
        return lines


def _natural_width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def show(sheet: Sheet, console: Optional[Console] = None) -> None:
    """Print ``sheet`` in the first layout that fits the console's width: the boxed table, the compact table (then
    with its ``squeeze`` columns cut), or one record per row."""
    console = console or _console()
    for compact, squeezed in ((False, False), (True, False), (True, True)):
        if squeezed and not sheet.squeeze:
            break
        table = sheet.table(compact, squeezed)
        if _natural_width(console, table) <= console.width:
            console.print(table)
            return
    for line in sheet.records(console.width):  # packed to the width; a field longer than it is folded by rich
        console.print(line)


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in shape) if shape else "-"


def layer_sheet(layer_map: LayerMap, marks: Optional[dict[str, str]] = None) -> Sheet:
    marks = marks or {}
    fixed = ", ".join(f"{name}={value!r}" for name, value in layer_map.fixed_args.items())
    sheet = Sheet(title=f"{layer_map.model} — {len(layer_map.layers)} layers (traced with {layer_map.method}, "
                        f"input {_shape(layer_map.input_shape)}{', fixed ' + fixed if fixed else ''})",
                  columns=["name", "kind", "shape", "channels", "stride", "pair"], short={"channels": "ch"},
                  no_wrap=("name",), squeeze={"kind": 11})
    for info in layer_map.layers:
        mark = marks.get(info.name, "")
        sheet.add_row(info.name, info.kind, _shape(info.shape), str(info.channels or "-"), str(info.stride or "-"),
                      mark, style="bold green" if mark else None)
    return sheet


def print_layer_map(layer_map: LayerMap, marks: Optional[dict[str, str]] = None) -> None:
    show(layer_sheet(layer_map, marks))


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
    data, console = plan.data, _console()
    norm = f"mean {tuple(round(v, 4) for v in data.mean)}, std {tuple(round(v, 4) for v in data.std)}"
    console.print(f"input: student reads {_shape(data.input_shape)}, {norm}", markup=False)
    for name, adapter in plan.graph.inputs.items():
        if adapter.identity:
            console.print(f"input: {name} reads the student's batch unchanged (expected input from {adapter.source})",
                          markup=False)
        else:
            console.print(f"input: {name} reads {_shape(adapter.out_shape)} (from {adapter.source}): "
                          + " → ".join(adapter.steps()), markup=False)


def print_plan(plan, maps: bool = True) -> None:
    """Both layer maps with the tapped layers marked, then one row per pair with the adapters inserted."""
    if maps:
        s_marks = {tap.student.name: f"← {r.label}" for r in plan.pairs for tap in r.taps}
        for name, teacher_map in plan.teacher_maps.items():
            print_layer_map(teacher_map, {tap.teacher.name: f"← {r.label}" for r in plan.pairs
                                          if r.teacher_name == name for tap in r.taps})
        print_layer_map(plan.student_map, s_marks)
    _console().print(f"data: {plan.data.description}", markup=False)
    print_inputs(plan)
    table = Sheet(title=f"{plan.spec.name}: loss terms",
                  columns=["term", "student", "teacher", "student side", "teacher side", "loss", "weight"],
                  short={"student side": "s-side", "teacher side": "t-side"}, no_wrap=("term",))
    for term in plan.graph.terms:
        if term.kind is TermKind.PAIR:
            continue
        if term.kind is TermKind.LOGITS:
            table.add_row(term.label, "output", "output", "", "", f"{term.record.name} T={term.params.get('temperature')}"
                          + (" (standardised logits)" if term.standardise else ""),
                          f"{term.weight:g}")
        elif term.kind is TermKind.OBJECTIVE:
            module = plan.graph.loss_modules[term.adapter]
            table.add_row(term.label, "-", ", ".join(term.teacher_taps), "", "",
                          f"{type(module).__name__}'s own objective (train.stages[].objectives)", f"{term.weight:g}")
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
        module = plan.graph.loss_modules[r.key] if r.key in plan.graph.loss_modules else None
        loss = r.spec.loss.name + (f" + {type(module).__name__} ({sum(p.numel() for p in module.parameters()):,} "
                                   "params)" if module is not None else "")
        for j, tap in enumerate(r.taps):
            teacher = f"{r.teacher_name}: " * several + f"{tap.teacher.name} {_shape(tap.teacher.shape)}"
            table.add_row(r.label if j == 0 else "", f"{tap.student.name} {_shape(tap.student.shape)}", teacher,
                          " → ".join(tap.adapters.student_steps) or "identity",
                          " → ".join(tap.adapters.teacher_steps) or "identity",
                          loss if j == 0 else "", f"{r.spec.weight:g}" if j == 0 else "")
    show(table)


RUN_FILES = ("student.safetensors", "best.safetensors", "adapters.safetensors", "metrics.jsonl", "summary.json",
             "checkpoints/", "baseline/")
"""What the final ``run dir:`` line lists, each when the run has it."""


def print_summary(result) -> None:
    s, console = result.summary, _console()
    table = Sheet(title=f"{s['name']}: summary", columns=["model", "top-1"], right=("top-1",))
    for key in [k for k in s if k.startswith("teacher_top1")]:
        table.add_row("teacher" + key[len("teacher_top1"):].replace("/", " "), f"{s[key]:.2%}")
    if s.get("student_top1") is not None:
        table.add_row("student (distilled)" if any(k.startswith(("teacher_top1", "baseline_")) for k in s) else "student",
                      f"{s['student_top1']:.2%}")
    if "baseline_top1" in s:
        table.add_row("student alone (same budget)", f"{s['baseline_top1']:.2%}")
    show(table, console)
    for metric, label in (("knn", "k-NN top-1"), ("linear_probe", "linear probe")):
        if s.get(f"student_{metric}") is not None:
            alone = f" (alone: {s[f'baseline_{metric}']:.2%})" if s.get(f"baseline_{metric}") is not None else ""
            console.print(f"student {label}: {s[f'student_{metric}']:.2%}{alone}")
    if "baseline_top1" in s and s.get("student_top1") is not None:
        gain = s["student_top1"] - s["baseline_top1"]
        console.print(f"distillation gain: {gain * 100:+.2f} points")
    if result.run_dir is not None:
        run = Path(result.run_dir)
        held = [name for name in RUN_FILES if (run / name.rstrip("/")).exists()]
        console.print(f"run dir: {run} ({', '.join(held)})", markup=False, soft_wrap=True)  # a path stays whole
