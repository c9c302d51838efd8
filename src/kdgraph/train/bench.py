"""``kdgraph bench SPEC``: kdgraph's training step against a hand-written eager step with the same models.

Both variants start from the same weights and run on one synthetic batch of the spec's input shape, already on
the device:

- **kdgraph**: the trainer's own ``Trainer`` built from ``resolve_plan(spec)`` (no run directory), timing
  ``trainer.step(x, y)`` with the spec's runtime (precision, compile mode, channels_last, fused optimizer on CUDA);
- **hand-written**: copies of the same student, teacher and adapters; forward hooks registered once on the same
  taps, the same loss terms written with ``torch.nn.functional``, a plain (non-fused) torch optimizer with the
  same hyper-parameters and the same learning-rate schedule, eager, under the same autocast.

Each variant runs alone (built, timed, freed), so its CUDA peak memory is its own. Nothing is written to disk.
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdgraph.errors import KdgraphError
from kdgraph.graph.terms import TermKind
from kdgraph.losses.feature import mse
from kdgraph.losses.logits import soft_cross_entropy
from kdgraph.spec.schema import Spec
from kdgraph.train.optim import lr_factor
from kdgraph.runtime import Runtime

__all__ = ["BenchRow", "BenchResult", "HandStep", "measure", "bench_spec", "format_bench"]


@dataclass
class BenchRow:
    """One variant's numbers: throughput, the first step (compilation included) and CUDA peak memory."""

    variant: str
    images_per_s: float
    step_ms: float
    first_step_s: float
    peak_mib: Optional[float]
    first_loss: float


@dataclass
class BenchResult:
    name: str
    device: str
    precision: str
    compile_mode: Optional[str]
    batch: int
    input_shape: tuple[int, ...]
    rows: list[BenchRow]

    @property
    def ratio(self) -> float:
        """kdgraph images/s divided by the hand-written images/s (> 1: kdgraph is faster)."""
        by = {r.variant: r.images_per_s for r in self.rows}
        return by["kdgraph"] / by["hand-written"]

    @property
    def loss_rel_diff(self) -> float:
        by = {r.variant: r.first_loss for r in self.rows}
        return abs(by["kdgraph"] - by["hand-written"]) / max(abs(by["hand-written"]), 1e-12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, step: Callable[[], Any], device: torch.device, batch: int, steps: int, warmup: int,
            loss_of: Callable[[Any], float] = float) -> BenchRow:
    """Time ``step`` on ``device``: the first call alone (compilation), ``warmup`` untimed calls, then ``steps``
    calls between two synchronisations. The CUDA peak counts from the first call on."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    first_loss = loss_of(step())
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return BenchRow(name, batch * steps / elapsed, 1e3 * elapsed / steps, first, peak, first_loss)


def _hook_module(model: nn.Module, tap: str, store: dict[str, torch.Tensor], key: str) -> None:
    """Register one persistent hook writing ``tap``'s output (or ``NAME:input``'s first input) into ``store``."""
    base, _, suffix = tap.rpartition(":") if tap.endswith((":input", ":output")) else (tap, "", "output")
    try:
        module = model.get_submodule(base)
    except AttributeError:
        raise KdgraphError(f"{tap!r} is not a module of {type(model).__name__}: the hand-written baseline of "
                           "kdgraph bench taps with forward hooks, which see modules only. Pick a module name from "
                           "`kdgraph inspect SPEC`", key=key) from None
    if suffix == "input":
        module.register_forward_pre_hook(lambda m, args: store.__setitem__(tap, args[0]))
    else:
        module.register_forward_hook(lambda m, args, out: store.__setitem__(tap, out))


class HandStep:
    """The hand-written step: what a careful PyTorch user writes for a spec's terms (hooks, F.*, torch.optim)."""

    def __init__(self, spec: Spec, student: nn.Module, teacher: Optional[nn.Module], graph: nn.Module,
                 rt: Runtime, steps_per_epoch: int):
        self.rt, self.cfg = rt, spec.train
        fmt = {"memory_format": torch.channels_last} if rt.channels_last else {}
        self.student = student.to(rt.device, **fmt).train()
        self.teacher = teacher.to(rt.device, **fmt).eval().requires_grad_(False) if teacher is not None else None
        self.s_adapt = copy.deepcopy(graph.student_adapters).to(rt.device, **fmt).train()
        self.t_adapt = copy.deepcopy(graph.teacher_adapters).to(rt.device, **fmt).train()  # as DistillGraph.train()
        self.terms = [t for t in graph.terms if graph.active is None or t.kind is TermKind.CE or t.label in graph.active]
        self.s_feats: dict[str, torch.Tensor] = {}
        self.t_feats: dict[str, torch.Tensor] = {}
        for i, term in enumerate(self.terms):
            if term.kind.is_head:
                raise KdgraphError("kdgraph bench times teacher distillation; self_distill heads have no "
                                   "hand-written baseline here", key="self_distill")
            record = term.record
            if record is not None and (record.several or record.module is not None or record.inputs or
                                       term.standardise or (term.kind is TermKind.LOGITS and
                                                            record.name not in ("kl", "ce_soft"))):
                key = "distill.logits" if term.kind is TermKind.LOGITS else f"distill.pairs[{term.index}]"
                raise KdgraphError(f"kdgraph bench has no hand-written baseline for loss {record.name!r} (several "
                                   "taps, a loss module, run inputs or standardised logits); bench a spec with "
                                   "plain logit and feature losses", key=key)
            if term.kind is TermKind.PAIR:
                _hook_module(self.student, term.student_tap, self.s_feats, f"distill.pairs[{term.index}].student")
                _hook_module(self.teacher, term.teacher_tap, self.t_feats, f"distill.pairs[{term.index}].teacher")
        params = [p for p in (*self.student.parameters(), *self.s_adapt.parameters()) if p.requires_grad]
        o = self.cfg.optimizer
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if o.name == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                                              nesterov=o.nesterov and o.momentum > 0)
        else:
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            self.opt = cls(groups, lr=o.lr, betas=o.betas)
        epochs = self.cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: lr_factor(self.cfg.schedule, k, steps_per_epoch, epochs, o.lr))
        self.params = params

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(x)
        logits = self.student(x)
        total = logits.new_zeros((), dtype=torch.float32)
        for term in self.terms:
            if term.kind is TermKind.CE:
                value = F.cross_entropy(logits, y)
            elif term.kind is TermKind.LOGITS:
                temp = term.params["temperature"]
                if term.record.name == "kl":
                    value = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                                     reduction="batchmean", log_target=True) * temp * temp
                else:
                    value = soft_cross_entropy(logits, t_logits, temperature=temp)
            else:
                s = self.s_adapt[term.adapter](self.s_feats[term.student_tap])
                t = self.t_adapt[term.adapter](self.t_feats[term.teacher_tap])
                value = F.mse_loss(s.float(), t.float()) if term.fn is mse else term.fn(s.float(), t.float(),
                                                                                       **term.params)
            total = total + term.weight * value
        return total

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss.detach()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_spec(spec: Spec, *, steps: int = 20, warmup: int = 5, batch: Optional[int] = None) -> BenchResult:
    """Build the spec's plan and time both steps (hand-written first, then kdgraph) on one synthetic batch."""
    from kdgraph.plan import resolve_plan
    from kdgraph.train.trainer import Trainer
    from kdgraph.runtime import seed_everything

    for key, value, low in (("--steps", steps, 1), ("--warmup", warmup, 0), ("--batch", batch or 1, 1)):
        if value < low:
            raise KdgraphError(f"{key} must be at least {low}, got {value}")
    seed_everything(spec.runtime.seed)
    resolved = resolve_plan(spec)
    rt, data, plan = resolved.runtime, resolved.data, resolved
    batch = batch or spec.data.batch_size
    g = torch.Generator().manual_seed(spec.runtime.seed)
    x = torch.randn((batch, *data.input_shape), generator=g)
    y = torch.randint(data.num_classes, (batch,), generator=g)
    x, y = x.to(rt.device), y.to(rt.device)
    if rt.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(data.train) // spec.data.batch_size)
    # the hand-written copies are taken before the trainer touches (moves, converts, steps) anything
    hand = HandStep(spec, copy.deepcopy(resolved.student), copy.deepcopy(resolved.teacher), plan.graph, rt,
                    steps_per_epoch)
    rows = [measure("hand-written", lambda: hand.step(x, y), rt.device, batch, steps, warmup)]
    hand = None  # free the copies before the trainer's models are measured
    _free(rt.device)
    trainer = Trainer(resolved, runtime=rt)
    trainer.enter_epoch(0)
    trainer.graph.train()
    rows.append(measure("kdgraph", lambda: trainer.step(x, y), rt.device, batch, steps, warmup,
                        loss_of=lambda v: float(v["total"]) if v is not None else float("nan")))
    trainer.guard.flush()
    return BenchResult(spec.name, str(rt.device), rt.precision, rt.compile_mode, batch, tuple(data.input_shape),
                       rows)


def format_bench(result: BenchResult) -> str:
    """A short plain-text report: setup, loss check, one line per variant, the ratio."""
    mode = f"compiled ({result.compile_mode})" if result.compile_mode else "eager"
    lines = [f"{result.name}: device {result.device}, {result.precision}, kdgraph {mode}, hand-written eager; "
             f"synthetic batch {result.batch} x {result.input_shape}",
             "loss at the first step (same weights, same batch): " + ", ".join(
                 f"{r.variant} {r.first_loss:.6f}" for r in result.rows) + f" (rel diff {result.loss_rel_diff:.1e})",
             f"{'variant':<14} {'images/s':>10} {'step ms':>9} {'first step s':>13} {'peak MiB':>9}"]
    for r in result.rows:
        peak = f"{r.peak_mib:9.0f}" if r.peak_mib is not None else f"{'n/a':>9}"
        lines.append(f"{r.variant:<14} {r.images_per_s:10.0f} {r.step_ms:9.2f} {r.first_step_s:13.2f} {peak}")
    lines.append(f"ratio kdgraph / hand-written images/s: {result.ratio:.3f} (above 1: kdgraph is faster)")
    return "\n".join(lines)
