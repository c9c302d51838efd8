"""The training loop: build everything from a Spec, train, evaluate each epoch, checkpoint, export the student."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from rich.text import Text
from torch import nn

from kdgraph.data import DataBundle, WithIndex, make_loader
from kdgraph.errors import KdgraphError
from kdgraph.graph import BuiltGraph
from kdgraph.graph import TermKind
from kdgraph.graph.terms import legacy_adapter_renames
from kdgraph.graph.build import prune_masks
from kdgraph.graph.lookup import Teachers
from kdgraph.spec.schema import Spec
from kdgraph.train.checkpoint import (CheckpointMismatch, latest_checkpoint, load_checkpoint, read_meta,
                                      save_checkpoint)
from kdgraph.train.distributed import LOCAL, DistContext
from kdgraph.train.launch import start_distributed
from kdgraph.train.guard import Interrupted, NumericalError, StepGuard, stop_on_signals, total_norm
from kdgraph.train.evaluate import embedding_metrics, head_top1, teachers_top1, top1
from kdgraph.train.optim import build_optimizer, build_scheduler, schedule_warning
from kdgraph.train.prefetch import prefetch
from kdgraph.train.progress import Reporter, epoch_line
from kdgraph.train.resolve import ResolvedPlan, resolve_plan
from kdgraph.train.rundir import RunDir
from kdgraph.train.run_state import finished, previous_summary, stopped_by, tidy_on_failure
from kdgraph.train.tb import TensorBoardLogger
from kdgraph.train.teacher_cache import TeacherCache, cache_is_exact, teachers_to_cache
from kdgraph.train.views import make_views
from kdgraph.train.runtime import Runtime, seed_everything

__all__ = ["TrainResult", "train", "NumericalError", "Interrupted"]


@dataclass
class TrainResult:
    """What a run returns: the trained student (plain architecture), per-epoch metrics and a summary."""

    student: nn.Module
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Optional[Path]
    plan: BuiltGraph = field(repr=False)


def _baseline_spec(spec: Spec) -> Spec:
    doc = spec.model_dump(mode="json")
    doc.update(teacher=None, teachers=[], distill={}, self_distill=None, name=f"{spec.name}-baseline")
    doc["train"].update(baseline=False, ce_weight=spec.train.ce_weight or 1.0)
    doc["output"] = str(Path(spec.run_dir) / "baseline")
    return Spec.model_validate(doc)


class _Loop:
    """One run's state. Kept small: the step, an epoch, and the bookkeeping around them (checkpoints, signals)."""

    def __init__(self, spec: Spec, plan: BuiltGraph, data: DataBundle, rt: Runtime, reporter: Reporter,
                 run_dir: Optional[RunDir], student: nn.Module, dist: DistContext = LOCAL):
        self.spec, self.plan, self.data, self.rt, self.reporter, self.run_dir = spec, plan, data, rt, reporter, run_dir
        self.student, self.dist = student, dist
        self.graph = plan.graph.to(rt.device)
        if rt.channels_last:
            self.graph.to(memory_format=torch.channels_last)
        self.model = dist.wrap(self.graph, find_unused=bool(spec.train.stages))  # the graph itself in one process
        cfg = spec.train
        self.cache: Optional[TeacherCache] = None  # built by start_cache() when training starts
        self.loader = make_loader(WithIndex(data.train), spec.data.batch_size, train=True,
                                  seed=spec.runtime.seed, drop_last=spec.data.drop_last, num_workers=spec.data.num_workers,
                                  pin_memory=rt.device.type == "cuda", shard=dist.shard)
        self.steps = len(self.loader) if not cfg.max_steps_per_epoch else min(len(self.loader), cfg.max_steps_per_epoch)
        if self.steps == 0:
            raise KdgraphError(f"the training set has {len(data.train)} images, fewer than one batch of "
                               f"{spec.data.batch_size}; lower data.batch_size", key="data.batch_size")
        self.trainable = nn.ModuleDict({"student": self.graph.student, "adapters": self.graph.student_adapters})
        self.buffers = list(self.trainable.buffers())
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, self.params)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.steps, cfg.epochs)
        self.compiled = None
        if rt.compile_mode:
            self.compiled = torch.compile(self.model, mode=None if rt.compile_mode == "default" else rt.compile_mode)
        self.compile_checked = False
        self.aug_gen = torch.Generator().manual_seed(spec.runtime.seed + 7)
        self.guard = StepGuard(self.buffers, cfg.max_bad_steps, reporter.warn, self._last_checkpoint)
        self.best = -1.0
        self.stop_signal: Optional[int] = None
        # position inside the current epoch, restored on resume
        self.start_step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.seen = 0

    def _modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "adapters": nn.ModuleDict(
            {"student": self.graph.student_adapters, "teacher": self.graph.teacher_adapters})}

    # -- curriculum -------------------------------------------------------------------------------------------
    def _stage_starts(self) -> list[int]:
        starts, epoch = [], 0
        for stage in self.spec.train.stages:
            starts.append(epoch)
            epoch += stage.epochs
        return starts

    def stage_at(self, epoch: int) -> Optional[int]:
        """Index of the stage that contains ``epoch`` (0-based), None without a curriculum."""
        starts = self._stage_starts()
        return max((i for i, start in enumerate(starts) if start <= epoch), default=None)

    def _new_optimizer(self, stage: Optional[int]) -> None:
        """A fresh optimizer, with a schedule spanning the stage (or the whole run when ``stage`` is None)."""
        cfg = self.spec.train
        epochs = cfg.epochs if stage is None else cfg.stages[stage].epochs
        self.optimizer = build_optimizer(cfg.optimizer, self.params)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.steps, epochs)

    def enter_epoch(self, epoch: int, step_in_epoch: int = 0) -> Optional[str]:
        """Activate the terms of ``epoch``'s stage and reset the optimizer at the start of a stage that asks."""
        index = self.stage_at(epoch)
        if index is None:
            return None
        stage = self.spec.train.stages[index]
        labels = {t.label for t in self.graph.terms if t.kind is TermKind.PAIR and
                  (t.label in stage.pairs or t.label.removeprefix("pair:") in stage.pairs)}
        if stage.logits:
            labels.add("logits")
        self.graph.active = frozenset(labels)
        if stage.reset_optimizer and epoch == self._stage_starts()[index] and step_in_epoch == 0:
            self._new_optimizer(index)
        return stage.name or f"stage{index + 1}"

    def _optimizer_owner(self, epoch: int, step_in_epoch: int) -> Optional[int]:
        """The stage whose optimizer was in use at this position (the last resetting stage already begun)."""
        owner = None
        for index, start in enumerate(self._stage_starts()):
            begun = start < epoch or (start == epoch and step_in_epoch > 0)
            if begun and self.spec.train.stages[index].reset_optimizer:
                owner = index
        return owner

    def resume(self) -> tuple[int, list[dict[str, Any]]]:
        last = latest_checkpoint(self.run_dir.checkpoints) if self.run_dir else None
        if last is None:
            self.reporter.warn(f"no checkpoint in {self.run_dir.path if self.run_dir else 'memory'}: starting from "
                               "scratch")
            return 0, []
        position = read_meta(last)
        owner = self._optimizer_owner(position["epoch"], position["step_in_epoch"])
        if owner is not None:
            self._new_optimizer(owner)
        changed = self.run_dir.spec_changes(self.spec.model_dump(mode="json"))
        listed = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        try:
            meta = load_checkpoint(last, *self.dist.loadable(self._modules(), self.optimizer),
                                   renames=legacy_adapter_renames(self.graph.terms))
        except CheckpointMismatch as err:
            since = (f"this spec differs from {self.run_dir.spec} in: {listed}" if changed else
                     f"the spec is the one in {self.run_dir.spec}")
            err.message += (f"; {since}. Resume with the spec the run started with, or start over with --overwrite "
                            "(or another `output:`)")
            raise
        if changed:
            self.reporter.warn(f"resuming with a spec that differs from {self.run_dir.spec} in: {listed}")
        self.scheduler.load_state_dict(meta["scheduler"])
        self.aug_gen.set_state(torch.tensor(meta["aug_rng"], dtype=torch.uint8))
        self.start_step, self.seen, self.best = meta["step_in_epoch"], meta["seen"], meta["best"]
        self.sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in meta["sums"].items()}
        if not self.dist.is_main:  # the sums in a checkpoint are over all ranks: counted once, by rank 0
            self.sums, self.seen = {}, 0
        where = f"epoch {meta['epoch'] + 1}, step {self.start_step}" if self.start_step else f"epoch {meta['epoch']} done"
        self.reporter.info(f"resumed from {last.name} ({where})")
        rows = [r for r in self.run_dir.read_metrics() if r["epoch"] <= meta["epoch"]]
        return meta["epoch"], rows

    def step(self, x: torch.Tensor, y: torch.Tensor, x_teacher: Optional[torch.Tensor] = None,
             cached: Optional[dict[str, dict[str, torch.Tensor]]] = None,
             labels: Optional[torch.Tensor] = None) -> Optional[dict[str, torch.Tensor]]:
        """One optimizer step; a non-finite loss or gradient skips the update (None) and counts as a bad step.

        ``y`` is what the CE term sees (indices or mixed soft targets), ``labels`` the hard labels for train top-1.
        A skipped step changes nothing: BatchNorm statistics updated by its forward are put back too. With a fused
        optimizer (CUDA) the check stays on the device and this never returns None (guard.py)."""
        self.guard.before_forward()
        with self.rt.autocast():
            out = self._forward(x, y, x_teacher, cached)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        if self.spec.train.grad_clip:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.spec.train.grad_clip)
        else:
            grad_norm = total_norm([p.grad for p in self.params if p.grad is not None])
        agreed = self.dist.all_finite(out.total, grad_norm) if self.dist.enabled else None  # every rank skips
        if self.guard.check(out.total, grad_norm, out.terms, self.optimizer, len(x), finite=agreed):
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return None
        self.optimizer.step()
        self.scheduler.step()
        correct = (out.logits.argmax(1) == (y if labels is None else labels)).sum()
        return self.guard.mask(dict(out.terms, total=out.total.detach(), correct=correct))

    def _forward(self, *args: Any):
        """The compiled graph when it compiles; on a failure at the first call, one warning and eager from then on."""
        if self.compiled is None:
            return self.model(*args)
        if self.compile_checked:
            return self.compiled(*args)
        try:
            out = self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compile/capture failure means "run eagerly"
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.reporter.warn(f"torch.compile failed ({reason[:300]}); running eagerly instead")
            self.compiled = None
            return self.model(*args)
        self.compile_checked = True
        return out

    def _last_checkpoint(self) -> Optional[str]:
        last = latest_checkpoint(self.run_dir.checkpoints) if self.run_dir else None
        return last.name if last else None

    def epoch(self, epoch: int) -> Optional[dict[str, Any]]:
        """Train one epoch (from ``start_step`` when resuming); None when a stop signal arrived mid-epoch."""
        stage = self.enter_epoch(epoch, self.start_step)
        self.graph.train()
        self.loader.set_epoch(epoch)
        self.loader.skip(self.start_step)
        start, seen_before = time.perf_counter(), self.seen
        # the rate at the epoch's first step, also when resuming in its middle (the scheduler counts every step)
        lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch - self.start_step)
        every = self.spec.output.checkpoint_every
        with self.reporter.epoch_bar(f"epoch {epoch + 1}/{self.spec.train.epochs}", self.steps) as bar:
            bar.advance(n=self.start_step)
            for i, (x, y, *index) in enumerate(prefetch(self.loader, self.rt.device), start=self.start_step):
                if i >= self.steps:
                    break
                views = make_views(x, y, self.spec.data, self.data.num_classes, self.aug_gen,
                                   two_views=bool(self.graph.teachers), draw=self.dist.draw(len(x)),
                                   norm=(self.data.mean, self.data.std))
                x, x_t = self._layout(views.student), self._layout(views.teacher)
                cached = self.cache.lookup(index[0], self.rt.device) if self.cache is not None else None
                values = self.step(x, views.target, x_t, cached, views.labels)
                if values is not None:
                    for key, value in values.items():
                        weight = 1 if key == "correct" else len(x)
                        self.sums[key] = self.sums.get(key, 0) + value.detach().double() * weight
                    self.seen += len(x)
                self.seen -= self.guard.poll()  # device-side guard: reads its counters every few steps
                bar.advance(status=f"loss {float(values['total']):.3f}" if values is not None and i % 10 == 0 else None)
                done = i + 1
                if self.dist.stop_agreed(self) and done < self.steps:
                    self.checkpoint(epoch, done)
                    return None
                if every and done % every == 0 and done < self.steps:
                    self.checkpoint(epoch, done)
        self.seen -= self.guard.flush()
        elapsed = time.perf_counter() - start
        self.sums, self.seen = self.dist.reduce_sums(self.sums, self.seen)
        row: dict[str, Any] = {"epoch": epoch + 1}
        if stage is not None:
            row["stage"] = stage
        seen = max(1, self.seen)
        for key, value in self.sums.items():
            if key != "correct":
                row["loss/" + key] = float(value) / seen
        if "top1" in self.spec.eval.metrics:  # a classifier trained without labels or logits has no meaningful top-1
            row["train_top1"] = float(self.sums.get("correct", 0)) / seen
        if (epoch + 1) % self.spec.eval.every == 0 or epoch + 1 == self.spec.train.epochs:
            row.update(self.evaluate())
        row["lr"] = lr
        row["images_per_s"] = (self.seen - seen_before) / elapsed
        row["time_s"] = elapsed
        self.start_step, self.sums, self.seen = 0, {}, 0
        return self.dist.broadcast(row)

    def start_cache(self) -> None:
        """Compute the outputs of the teachers ``teacher.cache`` selects, once, over the training set."""
        spec, data, rt = self.spec, self.data, self.rt
        cached = teachers_to_cache(spec, self.graph.teachers, data.train, data.input_shape, rt.device)
        if cached:
            share = f" ({-(-len(data.train) // self.dist.world):,} per process)" if self.dist.world > 1 else ""
            self.reporter.info(f"  teacher.cache: computing the outputs of {', '.join(cached)} once over "
                               f"{len(data.train):,} training images{share}")
            self.cache = TeacherCache(spec, cached, data.train, rt.device, rt.channels_last, self.dist)

    def _layout(self, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return self.rt.inputs(x) if x is not None else None

    def evaluate(self) -> dict[str, float]:
        """The metrics ``eval.metrics`` asks for (``val_top1``, ``val_knn``, ``val_linear_probe``) on the test split."""
        row = {}
        if "top1" in self.spec.eval.metrics:
            row["val_top1"] = top1(self.dist.eval_module(self.student, self.graph), self.data.test, self.spec,
                                   self.rt, self.dist)
            if any(t.kind is TermKind.HEAD_CE for t in self.graph.terms):
                row.update(head_top1(self.graph, self.data.test, self.spec, self.rt, self.dist))
        row.update(embedding_metrics(self.graph, self.data.train, self.data.test, self.spec, self.rt))
        return row

    def update_best(self, epoch: int, val_top1: Optional[float]) -> None:
        """Replace best.safetensors when ``val_top1`` (after ``epoch`` epochs) beats every earlier epoch."""
        if self.run_dir is not None and val_top1 is not None and val_top1 > self.best:
            self.best = val_top1
            self.dist.save_module(self.run_dir.best, self.student, {"epoch": str(epoch), "val_top1": str(val_top1)})

    def checkpoint(self, epoch: int, step_in_epoch: int = 0, val_top1: Optional[float] = None) -> None:
        """``epoch`` = completed epochs; ``step_in_epoch`` > 0 for a checkpoint inside the next epoch."""
        self.seen -= self.guard.flush()
        if self.run_dir is None:
            return
        self.update_best(epoch, val_top1)
        sums, seen = self.dist.reduce_sums(self.sums, self.seen)  # distributed: over all ranks; collective
        modules, optimizer = self.dist.full_state(self._modules(), self.optimizer)
        if not self.dist.is_main:
            return
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "seen": seen, "best": self.best,
                "sums": {k: float(v) for k, v in sums.items()}, "scheduler": self.scheduler.state_dict(),
                "aug_rng": self.aug_gen.get_state().tolist()}
        save_checkpoint(self.run_dir.checkpoints, f"ckpt-e{epoch:04d}-s{step_in_epoch:06d}", modules, optimizer, meta)
        for old in sorted(self.run_dir.checkpoints.glob("ckpt-*.json"))[:-self.spec.output.keep]:
            old.unlink()
            old.with_suffix(".safetensors").unlink(missing_ok=True)


def train(spec: Spec, *, student: Optional[nn.Module] = None, teacher: Teachers = None,
          overwrite: bool = False, resume: bool = False, quiet: bool = False, write: bool = True,
          reporter: Optional[Reporter] = None) -> TrainResult:
    """Run the whole pipeline for ``spec``; live ``student``/``teacher`` modules replace the spec's references
    (``teacher`` may be a dict by teacher name).

    Nothing is written before the spec, models, data and pairs all check out. ``write=False`` keeps it in memory.
    A run directory this call created is removed again if it fails or is interrupted before anything was trained.
    """
    dist = start_distributed(spec)  # LOCAL in one process; under torchrun: rank 0 prints and writes
    reporter = dist.reporter(reporter or Reporter(quiet=quiet))
    seed_everything(spec.runtime.seed)
    resolved = resolve_plan(spec, student, teacher)
    run_dir = dist.run_dir(spec.run_dir) if write else None
    with tidy_on_failure(run_dir if dist.is_main else None):
        return _run(resolved, dist, reporter, run_dir, overwrite=overwrite, resume=resume, quiet=quiet)


def _run(resolved: ResolvedPlan, dist: DistContext, reporter: Reporter, run_dir: Optional[RunDir], *,
         overwrite: bool, resume: bool, quiet: bool) -> TrainResult:
    spec, data, student, teachers, plan = (resolved.spec, resolved.data, resolved.student, resolved.teachers,
                                           resolved.graph_plan)
    rt = dist.runtime(resolved.runtime, reporter)
    wants_tb = "tensorboard" in spec.runtime.log and run_dir is not None and dist.is_main
    if wants_tb:
        TensorBoardLogger.check_available()
    if run_dir is not None:
        try:
            run_dir.prepare(spec.model_dump(mode="json"), overwrite=overwrite, resume=resume)
        except KdgraphError as err:
            err.line = err.line or spec.line_of("output")
            raise
    done = resume and run_dir is not None and finished(run_dir, spec.train.epochs)  # nothing left to train
    tb = TensorBoardLogger(run_dir.path / "tensorboard") if wants_tb else None
    masks = prune_masks(plan.pairs)
    if masks and run_dir is not None:
        run_dir.write_json(run_dir.path / "prune_masks.json", masks)
    reporter.info(Text.assemble((spec.name, "bold"), f": {data.description}; device {rt.device}, {rt.precision}"
                                f"{', compiled' if rt.compile_mode else ''}"))
    for report in plan.pairs:
        steps = " → ".join(report.adapters.student_steps) or "identity"
        reporter.info(f"  {report.label}: {report.student.shape} → {report.teacher.shape} via {steps}")
    for warning in resolved.warnings:
        reporter.warn(warning)
    loop = _Loop(spec, plan, data, rt, reporter, run_dir, student, dist)
    summary: dict[str, Any] = {"name": spec.name, "data": data.description}
    known = previous_summary(run_dir) if done else {}  # a finished run's teacher top-1 is not measured again
    for key, score in teachers_top1(teachers, plan.teacher_maps, data, spec, rt, dist, known).items():
        summary[key] = score
        reporter.info(f"  {key.removeprefix('teacher_top1/') if '/' in key else 'teacher'} top-1 {score:.2%}")
    if warning := schedule_warning(spec.train.schedule, spec.train.epochs):
        reporter.warn(warning)
    if done:
        reporter.info(f"  {run_dir.path}: all {spec.train.epochs} epochs are done; nothing to train")
    else:
        loop.start_cache()
    if loop.cache is not None and not cache_is_exact(spec, data.train):
        reporter.warn("teacher.cache: outputs: cached teachers saw each training image once (un-augmented, or one "
                      "random crop of imagefolder's), so they no longer share the student's view (the fixed-teacher "
                      "ablation)")
    best_key = "val_" + spec.eval.metrics[0]
    start_epoch, rows = loop.resume() if resume else (0, [])
    weights = {term.label: term.weight for term in plan.graph.terms}
    with stop_on_signals(loop):
        for epoch in range(start_epoch, spec.train.epochs):
            row = loop.epoch(epoch)
            stop = dist.stop_agreed(loop)  # collective under torchrun: every rank asks once per epoch
            if row is not None:
                rows.append(row)
                reporter.info(epoch_line(row, weights))
                if tb is not None:
                    tb.log(row, step=row["epoch"])
                if run_dir is not None:
                    run_dir.write_metrics(rows)
                    if (epoch + 1) % spec.output.checkpoint_epochs == 0 or epoch + 1 == spec.train.epochs or stop:
                        loop.checkpoint(epoch + 1, val_top1=row.get(best_key))
                    else:  # best.safetensors follows every epoch, not only the checkpointed ones
                        loop.update_best(epoch + 1, row.get(best_key))
            if stop and (row is None or epoch + 1 < spec.train.epochs):
                raise stopped_by(loop.stop_signal, run_dir)
    if tb is not None:
        tb.close()
    for metric in spec.eval.metrics:
        summary[f"student_{metric}"] = rows[-1].get(f"val_{metric}") if rows else None
    summary["epochs"] = spec.train.epochs
    if run_dir is not None:
        dist.save_module(run_dir.student, student)
        dist.save_module(run_dir.adapters, loop._modules()["adapters"])
        run_dir.write_json(run_dir.summary, summary)  # now, so a run resumed during its baseline can reuse it
    if spec.train.baseline and (spec.teacher is not None or spec.teachers):
        reporter.info("baseline: the same student trained without distillation, same budget")
        base_spec = _baseline_spec(spec)
        again = resume and Path(base_spec.run_dir).is_dir()  # a baseline already begun resumes; none yet: a fresh one
        base = train(base_spec, overwrite=not again, resume=again, quiet=quiet, write=run_dir is not None,
                     reporter=reporter)
        summary.update({f"baseline_{m}": base.summary[f"student_{m}"] for m in spec.eval.metrics})
        if run_dir is not None:
            run_dir.write_json(run_dir.summary, summary)
    del loop  # its DDP/FSDP wrapper holds the process group that finish() closes
    dist.finish(student)
    return TrainResult(student=student, metrics=rows, summary=summary, run_dir=run_dir.path if run_dir else None,
                       plan=plan)
