"""The training loop: build everything from a Spec, train, evaluate each epoch, checkpoint, export the student."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.data import DataBundle, DataError, build_datasets, make_loader, random_crop_flip, take
from kdgraph.errors import KdgraphError, with_key
from kdgraph.graph import GraphPlan
from kdgraph.graph.build import prune_masks
from kdgraph.models import build_model
from kdgraph.spec.schema import DataSpec, Spec
from kdgraph.train.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint, save_tensors
from kdgraph.train.guard import Interrupted, NumericalError, StepGuard, stop_on_signals, total_norm
from kdgraph.train.evaluate import head_top1, top1
from kdgraph.train.optim import build_optimizer, build_scheduler
from kdgraph.train.prefetch import prefetch
from kdgraph.train.progress import Reporter
from kdgraph.train.resolve import resolve_plan
from kdgraph.train.rundir import RunDir
from kdgraph.train.tb import TensorBoardLogger
from kdgraph.train.runtime import Runtime, resolve_runtime, seed_everything

__all__ = ["TrainResult", "train", "build_data", "build_models", "NumericalError", "Interrupted"]


@dataclass
class TrainResult:
    """What a run returns: the trained student (plain architecture), per-epoch metrics and a summary."""

    student: nn.Module
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Optional[Path]
    plan: GraphPlan = field(repr=False)


def build_data(cfg: DataSpec, seed: int, line: Optional[int] = None) -> DataBundle:
    """The train/test data sets a DataSpec names, cut to ``train_subset``/``test_subset`` when given."""
    synthetic = cfg.dataset == "synthetic"
    try:
        bundle = build_datasets(
            cfg.dataset, cfg.root, image_size=cfg.image_size, source=cfg.source, seed=seed,
            num_classes=cfg.synthetic.classes if synthetic else None,
            synthetic_size=cfg.synthetic.train_size if synthetic else None,
            channels=cfg.synthetic.channels if synthetic else None,
        )
    except DataError as err:
        raise with_key(err, "data", line) from None
    if cfg.train_subset:
        bundle.train = take(bundle.train, cfg.train_subset)
    if cfg.test_subset:
        bundle.test = take(bundle.test, cfg.test_subset)
    return bundle


def build_models(spec: Spec, student: Optional[nn.Module] = None,
                 teacher: Optional[nn.Module] = None) -> tuple[nn.Module, Optional[nn.Module]]:
    """Live modules win over the spec's references (Python API); errors carry the spec key."""
    if student is None:
        try:
            student = build_model(spec.student.model, spec.student.kwargs, spec.student.weights)
        except KdgraphError as err:
            err.key, err.line = err.key or "student", err.line or spec.line_of("student")
            raise
    if teacher is None and spec.external_teacher is not None:
        try:
            teacher = build_model(spec.teacher.model, spec.teacher.kwargs, spec.teacher.weights)
        except KdgraphError as err:
            err.key, err.line = err.key or "teacher", err.line or spec.line_of("teacher")
            raise
    return student, teacher


def _baseline_spec(spec: Spec) -> Spec:
    doc = spec.model_dump(mode="json")
    doc.update(teacher=None, distill={}, self_distill=None, name=f"{spec.name}-baseline")
    doc["train"].update(baseline=False, ce_weight=spec.train.ce_weight or 1.0)
    doc["output"] = str(Path(spec.run_dir) / "baseline")
    return Spec.model_validate(doc)


class _Loop:
    """One run's state. Kept small: the step, an epoch, and the bookkeeping around them (checkpoints, signals)."""

    def __init__(self, spec: Spec, plan: GraphPlan, data: DataBundle, rt: Runtime, reporter: Reporter,
                 run_dir: Optional[RunDir], student: nn.Module):
        self.spec, self.plan, self.data, self.rt, self.reporter, self.run_dir = spec, plan, data, rt, reporter, run_dir
        self.student = student
        self.graph = plan.graph.to(rt.device)
        if rt.channels_last:
            self.graph.to(memory_format=torch.channels_last)
        cfg = spec.train
        self.loader = make_loader(data.train, spec.data.batch_size, train=True, seed=spec.runtime.seed, drop_last=True,
                                  num_workers=spec.data.num_workers, pin_memory=rt.device.type == "cuda")
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
            self.compiled = torch.compile(self.graph, mode=None if rt.compile_mode == "default" else rt.compile_mode)
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
        labels = {t.label for t in self.graph.terms if t.kind == "pair" and
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
            return 0, []
        position = read_meta(last)
        owner = self._optimizer_owner(position["epoch"], position["step_in_epoch"])
        if owner is not None:
            self._new_optimizer(owner)
        meta = load_checkpoint(last, self._modules(), self.optimizer)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.aug_gen.set_state(torch.tensor(meta["aug_rng"], dtype=torch.uint8))
        self.start_step, self.seen, self.best = meta["step_in_epoch"], meta["seen"], meta["best"]
        self.sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in meta["sums"].items()}
        where = f"epoch {meta['epoch'] + 1}, step {self.start_step}" if self.start_step else f"epoch {meta['epoch']} done"
        self.reporter.info(f"resumed from {last.name} ({where})")
        rows = [r for r in self.run_dir.read_metrics() if r["epoch"] <= meta["epoch"]]
        return meta["epoch"], rows

    def step(self, x: torch.Tensor, y: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """One optimizer step; a non-finite loss or gradient skips the update (None) and counts as a bad step.

        A skipped step changes nothing: BatchNorm statistics updated by its forward are put back too. With a fused
        optimizer (CUDA) the check stays on the device and this never returns None (guard.py)."""
        self.guard.before_forward()
        with self.rt.autocast():
            out = self._forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        if self.spec.train.grad_clip:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.spec.train.grad_clip)
        else:
            grad_norm = total_norm([p.grad for p in self.params if p.grad is not None])
        if self.guard.check(out.total, grad_norm, out.terms, self.optimizer, len(x)):
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return None
        self.optimizer.step()
        self.scheduler.step()
        correct = (out.logits.argmax(1) == y).sum()
        return self.guard.mask(dict(out.terms, total=out.total.detach(), correct=correct))

    def _forward(self, x: torch.Tensor, y: torch.Tensor):
        """The compiled graph when it compiles; on a failure at the first call, one warning and eager from then on."""
        if self.compiled is None:
            return self.graph(x, y)
        if self.compile_checked:
            return self.compiled(x, y)
        try:
            out = self.compiled(x, y)
        except Exception as err:  # noqa: BLE001 - any compile/capture failure means "run eagerly"
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.reporter.warn(f"torch.compile failed ({reason[:300]}); running eagerly instead")
            self.compiled = None
            return self.graph(x, y)
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
        lr = self.optimizer.param_groups[0]["lr"]
        every = self.spec.output.checkpoint_every
        with self.reporter.epoch_bar(f"epoch {epoch + 1}/{self.spec.train.epochs}", self.steps) as bar:
            bar.advance(n=self.start_step)
            for i, (x, y) in enumerate(prefetch(self.loader, self.rt.device), start=self.start_step):
                if i >= self.steps:
                    break
                if self.spec.data.augment == "crop-flip":
                    x = random_crop_flip(x, padding=max(1, x.shape[-1] // 8), generator=self.aug_gen)
                if self.rt.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                values = self.step(x, y)
                if values is not None:
                    for key, value in values.items():
                        weight = 1 if key == "correct" else len(x)
                        self.sums[key] = self.sums.get(key, 0) + value.detach().double() * weight
                    self.seen += len(x)
                self.seen -= self.guard.poll()  # device-side guard: reads its counters every few steps
                bar.advance(status=f"loss {float(values['total']):.3f}" if values is not None and i % 10 == 0 else None)
                done = i + 1
                if self.stop_signal is not None and done < self.steps:
                    self.checkpoint(epoch, done)
                    return None
                if every and done % every == 0 and done < self.steps:
                    self.checkpoint(epoch, done)
        self.seen -= self.guard.flush()
        elapsed = time.perf_counter() - start
        row: dict[str, Any] = {"epoch": epoch + 1}
        if stage is not None:
            row["stage"] = stage
        seen = max(1, self.seen)
        for key, value in self.sums.items():
            if key != "correct":
                row["loss/" + key] = float(value) / seen
        row["train_top1"] = float(self.sums.get("correct", 0)) / seen
        row["val_top1"] = top1(self.student, self.data.test, self.spec, self.rt)
        if any(t.kind == "head_ce" for t in self.graph.terms):
            row.update(head_top1(self.graph, self.data.test, self.spec, self.rt))
        row["lr"] = lr
        row["images_per_s"] = (self.seen - seen_before) / elapsed
        row["time_s"] = elapsed
        self.start_step, self.sums, self.seen = 0, {}, 0
        return row

    def checkpoint(self, epoch: int, step_in_epoch: int = 0, val_top1: Optional[float] = None) -> None:
        """``epoch`` = completed epochs; ``step_in_epoch`` > 0 for a checkpoint inside the next epoch."""
        self.seen -= self.guard.flush()
        if self.run_dir is None:
            return
        if val_top1 is not None and val_top1 > self.best:
            self.best = val_top1
            save_tensors(self.run_dir.best, self.student.state_dict(), {"epoch": str(epoch), "val_top1": str(val_top1)})
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "seen": self.seen, "best": self.best,
                "sums": {k: float(v) for k, v in self.sums.items()}, "scheduler": self.scheduler.state_dict(),
                "aug_rng": self.aug_gen.get_state().tolist()}
        save_checkpoint(self.run_dir.checkpoints, f"ckpt-e{epoch:04d}-s{step_in_epoch:06d}", self._modules(),
                        self.optimizer, meta)
        for old in sorted(self.run_dir.checkpoints.glob("ckpt-*.json"))[:-self.spec.output.keep]:
            old.unlink()
            old.with_suffix(".safetensors").unlink(missing_ok=True)


def _has_conv(*models: Optional[nn.Module]) -> bool:
    return any(isinstance(m, nn.Conv2d) for model in models if model is not None for m in model.modules())


def _is_classifier(model: nn.Module, data: DataBundle) -> bool:
    """True when the model's output is one logit per class of this data set."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = model(torch.zeros((1, *data.input_shape), device=next(model.parameters()).device))
        return torch.is_tensor(probe) and probe.shape == (1, data.num_classes)
    except Exception:  # noqa: BLE001 - a model that cannot be probed this way is simply not evaluated
        return False
    finally:
        model.train(was_training)


def _format_row(row: dict[str, Any]) -> str:
    losses = "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss/"))
    stage = f" [{row['stage']}]" if "stage" in row else ""
    return (f"epoch {row['epoch']}{stage}: {losses}  train {row['train_top1']:.2%}  val {row['val_top1']:.2%}  "
            f"{row['images_per_s']:.0f} img/s")


def train(spec: Spec, *, student: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
          overwrite: bool = False, resume: bool = False, quiet: bool = False, write: bool = True,
          reporter: Optional[Reporter] = None) -> TrainResult:
    """Run the whole pipeline for ``spec``; live ``student``/``teacher`` modules replace the spec's references.

    Nothing is written before the spec, models, data and pairs all check out. ``write=False`` keeps it in memory.
    """
    reporter = reporter or Reporter(quiet=quiet)
    seed_everything(spec.runtime.seed)
    resolved = resolve_plan(spec, student, teacher)
    data, student, teacher, plan, rt = (resolved.data, resolved.student, resolved.teacher, resolved.graph_plan,
                                        resolved.runtime)
    run_dir = RunDir(spec.run_dir) if write else None
    wants_tb = "tensorboard" in spec.runtime.log and run_dir is not None
    if wants_tb:
        TensorBoardLogger.check_available()
    if run_dir is not None:
        try:
            run_dir.prepare(spec.model_dump(mode="json"), overwrite=overwrite, resume=resume)
        except KdgraphError as err:
            err.line = err.line or spec.line_of("output")
            raise
    tb = TensorBoardLogger(run_dir.path / "tensorboard") if wants_tb else None
    masks = prune_masks(plan.pairs)
    if masks and run_dir is not None:
        run_dir.write_json(run_dir.path / "prune_masks.json", masks)
    reporter.info(f"[bold]{spec.name}[/bold]: {data.description}; device {rt.device}, {rt.precision}"
                  f"{', compiled' if rt.compile_mode else ''}")
    for report in plan.pairs:
        steps = " → ".join(report.plan.student_steps) or "identity"
        reporter.info(f"  {report.label}: {report.student.shape} → {report.teacher.shape} via {steps}")
    loop = _Loop(spec, plan, data, rt, reporter, run_dir, student)
    summary: dict[str, Any] = {"name": spec.name}
    if teacher is not None and _is_classifier(teacher, data):
        summary["teacher_top1"] = top1(teacher.to(rt.device), data.test, spec, rt)
        reporter.info(f"  teacher top-1 {summary['teacher_top1']:.2%}")
    start_epoch, rows = loop.resume() if resume else (0, [])
    with stop_on_signals(loop):
        for epoch in range(start_epoch, spec.train.epochs):
            row = loop.epoch(epoch)
            if row is not None:
                rows.append(row)
                reporter.info(_format_row(row))
                if tb is not None:
                    tb.log(row, step=row["epoch"])
                if run_dir is not None:
                    run_dir.write_metrics(rows)
                    loop.checkpoint(epoch + 1, val_top1=row["val_top1"])
            if loop.stop_signal is not None and (row is None or epoch + 1 < spec.train.epochs):
                where = f" --set output={spec.run_dir}" if spec.output.dir is None else ""
                raise Interrupted(f"stopped by {signal.Signals(loop.stop_signal).name}; checkpoint written. Resume "
                                  f"with: kdgraph train SPEC --resume{where}" if run_dir else "stopped by a signal")
    if tb is not None:
        tb.close()
    summary["student_top1"] = rows[-1]["val_top1"] if rows else None
    summary["epochs"] = spec.train.epochs
    if run_dir is not None:
        save_tensors(run_dir.student, student.state_dict())
        save_tensors(run_dir.adapters, loop._modules()["adapters"].state_dict())
    if spec.train.baseline and spec.teacher is not None:
        reporter.info("baseline: the same student trained without distillation, same budget")
        base = train(_baseline_spec(spec), overwrite=True, quiet=quiet, write=write, reporter=reporter)
        summary["baseline_top1"] = base.summary["student_top1"]
    if run_dir is not None:
        run_dir.write_json(run_dir.summary, summary)
    return TrainResult(student=student, metrics=rows, summary=summary, run_dir=run_dir.path if run_dir else None,
                       plan=plan)
