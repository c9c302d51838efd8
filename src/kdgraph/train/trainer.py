"""``Trainer``: one run's training state and what is done with it, a step, an epoch, an evaluation, a checkpoint.

``kdgraph.train.train`` builds one from a resolved :class:`kdgraph.plan.Plan` and drives it epoch by epoch;
benchmarks and tests build one the same way and call :meth:`Trainer.step` directly::

    plan = kdgraph.plan.resolve_plan(spec)
    trainer = Trainer(plan)            # no run directory: nothing is written
    trainer.enter_epoch(0)
    values = trainer.step(x, y)        # one optimizer step on a batch already on the device
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.data import ReplayedViews, WithIndex, make_loader
from kdgraph.data.views import ViewMaker
from kdgraph.errors import KdgraphError
from kdgraph.eval.evaluate import embedding_metrics, head_top1, top1, top1_agreement
from kdgraph.graph import TermKind
from kdgraph.graph.terms import legacy_adapter_renames
from kdgraph.plan import Plan
from kdgraph.rundir.checkpoint import CheckpointMismatch, latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from kdgraph.rundir.rundir import RunDir
from kdgraph.runtime import Runtime
from kdgraph.session.distributed import LOCAL, DistContext
from kdgraph.session.progress import Reporter
from kdgraph.train.guard import StepGuard, total_norm
from kdgraph.train.optim import build_optimizer, build_scheduler
from kdgraph.train.prefetch import prefetch
from kdgraph.train.stages import Curriculum
from kdgraph.train.teacher_cache import TeacherCache, teachers_to_cache

__all__ = ["Trainer"]


def move_sharing(graph: nn.Module, student: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move ``graph`` onto ``device`` (channels-last when asked), the ``student`` module sharing its buffers after.

    ``Module.to`` gives every buffer slot a new tensor. The traced student keeps the student's root-level buffers
    (fx ``get_attr``) in slots of its own, so after a move the student module kept the old tensors: on the CPU beside
    parameters on the GPU, and deaf to the run (seen on the first GPU run: a buffer set to NaN was never read)."""
    before = [(module, key, buf) for module in graph.modules() for key, buf in module._buffers.items()
              if buf is not None]
    graph.to(device)
    if channels_last:
        graph.to(memory_format=torch.channels_last)
    moved = {id(buf): module._buffers[key] for module, key, buf in before if module._buffers[key] is not buf}
    for module in student.modules():
        for key, buf in module._buffers.items():
            if buf is not None and id(buf) in moved:
                module._buffers[key] = moved[id(buf)]
    return graph


class Trainer:
    """The training state of one run: the graph on its device (wrapped for data parallelism), the loader, optimizer
    and schedule, the curriculum, the step guard, the teacher cache, the running sums of the current epoch and the
    best score so far.

    ``runtime`` replaces the plan's (benchmarks pick their own); ``run_dir`` None keeps everything in memory
    (``checkpoint`` and ``update_best`` then write nothing). ``stop_signal`` is set by a SIGINT/SIGTERM handler
    (``kdgraph.train.guard.stop_on_signals``): the epoch checkpoints at the current step and returns None.
    """

    def __init__(self, plan: Plan, *, runtime: Optional[Runtime] = None, reporter: Optional[Reporter] = None,
                 run_dir: Optional[RunDir] = None, dist: DistContext = LOCAL):
        spec, rt = plan.spec, runtime or plan.runtime
        self.spec, self.plan, self.data, self.rt, self.run_dir, self.dist = spec, plan, plan.data, rt, run_dir, dist
        self.reporter = reporter or Reporter(quiet=True)
        self.student = plan.student
        # teacher.shard: fsdp shards a teacher before anything moves it whole onto the device
        self.sharded = dist.shard_teachers(plan.graph, {n: t.shard for n, t in spec.teacher_specs.items()})
        if any(t.shard == "fsdp" for t in spec.teacher_specs.values()) and not self.sharded:
            self.reporter.info("  teacher.shard: fsdp shards across torchrun processes; in one process the teacher "
                               "stays whole")
        self.graph = move_sharing(plan.graph, self.student, rt.device, rt.channels_last)
        self.curriculum = Curriculum(spec.train.stages, self.graph.terms)
        self.model = dist.wrap(self.graph, find_unused=bool(self.curriculum))  # the graph itself in one process
        cfg = spec.train
        self.cache: Optional[TeacherCache] = None  # built by cache_teachers() when training starts
        self._teacher_logits: dict[tuple[str, int], torch.Tensor] = {}  # the teachers' test logits, for agreement
        self._stored_logits: Optional[dict[str, torch.Tensor]] = None  # those a teacher store holds
        self.store = plan.store  # a teacher store (`teacher.store`): the views' numbers and the teachers' outputs
        train = plan.data.train
        if self.store is not None and plan.data.provides.seeded:  # imagefolder: epoch e's crops are the store's view
            train = ReplayedViews(train, self.store.views, self.store.seed)
        self.loader = make_loader(WithIndex(train), spec.data.batch_size, train=True, seed=spec.runtime.seed,
                                  drop_last=spec.data.drop_last, num_workers=spec.data.num_workers,
                                  pin_memory=rt.device.type == "cuda", shard=dist.shard)
        self.steps = len(self.loader) if not cfg.max_steps_per_epoch else min(len(self.loader), cfg.max_steps_per_epoch)
        if self.steps == 0:
            raise KdgraphError(f"the training set has {len(plan.data.train)} images, fewer than one batch of "
                               f"{spec.data.batch_size}; lower data.batch_size", key="data.batch_size")
        trainable = nn.ModuleDict({"student": self.graph.student, "adapters": self.graph.student_adapters,
                                   "loss": self.graph.loss_modules})
        self.params = [p for p in trainable.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = self._optimizer(None)
        self.compiled = None
        if rt.compile_mode:
            self.compiled = torch.compile(self.model, mode=None if rt.compile_mode == "default" else rt.compile_mode)
        self._compile_checked = False
        online = [name for name in self.graph.teachers if self.store is None or name not in self.store.teachers]
        seed = spec.runtime.seed if self.store is None or spec.data.views == "independent" else self.store.seed
        self.views = ViewMaker(spec.data, num_classes=plan.data.num_classes, seed=seed, dataset=train,
                               image_shape=plan.data.input_shape, norm=(plan.data.mean, plan.data.std),
                               two_views=bool(online))
        self.guard = StepGuard(list(trainable.buffers()), cfg.max_bad_steps, self.reporter.warn,
                               self._last_checkpoint)
        self.best = -1.0
        self.stop_signal: Optional[int] = None
        # position inside the current epoch, restored on resume
        self.start_step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.seen = 0

    # -- what is saved ------------------------------------------------------------------------------------------
    def saved_modules(self) -> dict[str, nn.Module]:
        """What a checkpoint holds besides the optimizer: the student and the adapters (never a teacher)."""
        return {"student": self.student, "adapters": self.adapters}

    @property
    def adapters(self) -> nn.ModuleDict:
        """Both sides' adapters and the loss modules, as ``adapters.safetensors`` holds them (``student.KEY.*``,
        ``teacher.KEY.*``, ``loss.KEY.*``: trainable parts and state such as CRD's memory bank)."""
        return nn.ModuleDict({"student": self.graph.student_adapters, "teacher": self.graph.teacher_adapters,
                              "loss": self.graph.loss_modules})

    # -- curriculum ---------------------------------------------------------------------------------------------
    def _optimizer(self, stage: Optional[int]) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.spec.train
        optimizer = build_optimizer(cfg.optimizer, self.params)
        return optimizer, build_scheduler(cfg.schedule, optimizer, self.steps, self.curriculum.epochs(stage, cfg.epochs))

    def reset_optimizer(self, stage: Optional[int]) -> None:
        """A fresh optimizer, with a schedule spanning stage ``stage`` (or the whole run when ``stage`` is None)."""
        self.optimizer, self.scheduler = self._optimizer(stage)

    def enter_epoch(self, epoch: int, step_in_epoch: int = 0) -> Optional[str]:
        """Activate the terms of ``epoch``'s stage, and reset the optimizer at the start of a stage that asks for it;
        returns the stage's name (None without a curriculum)."""
        self.graph.set_epoch(epoch)
        index = self.curriculum.stage_at(epoch)
        if index is None:
            return None
        self.graph.active = self.curriculum.active(index)
        if self.curriculum.resets_at(index, epoch, step_in_epoch):
            self.reset_optimizer(index)
        return self.curriculum.name(index)

    # -- one step -----------------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, x_teacher: Optional[torch.Tensor] = None,
             cached: Optional[dict[str, dict[str, torch.Tensor]]] = None,
             labels: Optional[torch.Tensor] = None,
             index: Optional[torch.Tensor] = None) -> Optional[dict[str, torch.Tensor]]:
        """One optimizer step; returns every term's value, ``total`` and ``correct`` (detached, on the device), or
        None when a non-finite loss or gradient skipped the update (a bad step).

        ``y`` is what the CE term sees (indices or mixed soft targets), ``labels`` the hard labels for train top-1,
        ``x_teacher`` the teachers' own view (independent views), ``cached`` the teachers' cached outputs, ``index``
        the batch's positions in the training set (for a loss that takes them). A skipped
        step changes nothing: BatchNorm statistics updated by its forward are put back too. With a fused optimizer
        (CUDA) the check stays on the device and this never returns None (guard.py)."""
        self.guard.before_forward()
        with self.rt.autocast():
            out = self._forward(x, y, x_teacher, cached, index)
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
        if self._compile_checked:
            return self.compiled(*args)
        try:
            out = self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compile/capture failure means "run eagerly"
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.reporter.warn(f"torch.compile failed ({reason[:300]}); running eagerly instead")
            self.compiled = None
            return self.model(*args)
        self._compile_checked = True
        return out

    # -- one epoch ----------------------------------------------------------------------------------------------
    def epoch(self, epoch: int) -> Optional[dict[str, Any]]:
        """Train epoch ``epoch`` (0-based; from ``start_step`` when resuming) and return its metrics row (losses,
        train top-1, the evaluation when due, lr, throughput); None when a stop signal arrived mid-epoch (after a
        checkpoint at that step)."""
        stage = self.enter_epoch(epoch, self.start_step)
        self.graph.train()
        self.loader.set_epoch(epoch)
        self.loader.skip(self.start_step)
        start, seen_before = time.perf_counter(), self.seen
        # the rate at the epoch's first step, also when resuming in its middle (the scheduler counts every step)
        lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch - self.start_step)
        every = self.spec.output.checkpoint_every
        with self.reporter.epoch_bar(f"epoch {epoch + 1}/{self.spec.train.epochs}", self.steps) as bar:
            bar.skip(self.start_step)
            for i, (x, y, index, host) in enumerate(prefetch(self.batches(epoch), self.rt.device),
                                                    start=self.start_step):
                if i >= self.steps:
                    break
                values = self.train_batch(x, y, index, host)
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
        row = self._row(epoch, stage)
        row.update(lr=lr, images_per_s=(self.seen - seen_before) / elapsed, time_s=elapsed)
        self.start_step, self.sums, self.seen = 0, {}, 0
        return self.dist.broadcast(row)

    def batches(self, epoch: int):
        """The loader's batches of ``epoch`` with what their views need (and, from a teacher store, the teachers'
        outputs), prepared on the host so that the prefetcher copies them too. In epoch ``e`` every image gets its
        view ``e`` (``e mod K`` from a store of K views). Each item is ``(x, y, index, host)``, for
        :meth:`train_batch` (on the device) after the prefetcher (``kdgraph.train.prefetch``)."""
        for x, y, index in self.loader:
            if self.store is None:
                yield x, y, index, {"views": self.views.prepare(index, epoch)}
                continue
            view = epoch % self.store.views
            stored = self.store.params(index, view) if self.spec.data.views == "shared" else None
            yield x, y, index, {"views": self.views.prepare(index, epoch if stored is None else view, stored),
                                "teachers": self.store.outputs(index, view, self.rt.channels_last)}

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                    host: dict[str, Any]) -> Optional[dict[str, torch.Tensor]]:
        """Views of one batch of :meth:`batches`, one step, and its values added to the epoch's running sums."""
        views = self.views.views(x, y, host["views"])
        x, x_t = self._layout(views.student), self._layout(views.teacher)
        cached = self.cache.lookup(index, self.rt.device) if self.cache is not None else None
        if "teachers" in host:
            cached = {**(cached or {}), **host["teachers"]}
        values = self.step(x, views.target, x_t, cached, views.labels, index)
        if values is not None:
            for key, value in values.items():
                weight = 1 if key == "correct" else len(x)
                self.sums[key] = self.sums.get(key, 0) + value.detach().double() * weight
            self.seen += len(x)
        self.seen -= self.guard.poll()  # device-side guard: reads its counters every few steps
        return values

    def _row(self, epoch: int, stage: Optional[str]) -> dict[str, Any]:
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
        return row

    def _layout(self, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return self.rt.inputs(x) if x is not None else None

    def cache_teachers(self) -> None:
        """Compute the outputs of the teachers ``teacher.cache`` selects, once, over the training set; start reading a
        teacher store's first view."""
        spec, data, rt = self.spec, self.data, self.rt
        if self.store is not None:
            self.store.prefetch(0)
        online = {n: t for n, t in self.graph.teachers.items() if self.store is None or n not in self.store.teachers}
        cached = teachers_to_cache(spec, online, data)
        if cached:
            share = f" ({-(-len(data.train) // self.dist.world):,} per process)" if self.dist.world > 1 else ""
            self.reporter.info(f"  teacher.cache: computing the outputs of {', '.join(cached)} once over "
                               f"{len(data.train):,} training images{share}")
            self.cache = TeacherCache(spec, cached, data.train, rt.device, rt.channels_last, self.dist, self.reporter)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The metrics ``eval.metrics`` asks for (``val_top1``, ``val_knn``, ``val_linear_probe``) on the test split,
        with every self-distillation head's top-1 beside ``val_top1``."""
        row = {}
        if "top1" in self.spec.eval.metrics:
            student = self.dist.eval_module(self.student, self.graph)
            classifies = self.plan.student_map.logit_count == self.data.num_classes
            if self._stored_logits is None:  # a store's teachers are not run: teach kept their test logits
                self._stored_logits = self.store.test_logits(self.data) if self.store is not None else {}
            stored = {n: v for n, v in self._stored_logits.items() if classifies}
            teachers = {name: t.to(self.rt.device) for name, t in self.plan.teacher_classifiers().items()
                        if classifies and name not in stored}
            if teachers or stored:  # val_top1 with val_agree and val_kl beside it, in one pass
                row.update(top1_agreement(student, teachers, self.data.test, self.spec, self.rt, self.dist,
                                          self._teacher_logits, stored))
            else:
                row["val_top1"] = top1(student, self.data.test, self.spec, self.rt, self.dist)
            if any(t.kind is TermKind.HEAD_CE for t in self.graph.terms):
                row.update(head_top1(self.graph, self.data.test, self.spec, self.rt, self.dist))
        row.update(embedding_metrics(self.graph, self.data.train, self.data.test, self.spec, self.rt))
        return row

    # -- checkpoints --------------------------------------------------------------------------------------------
    def update_best(self, epoch: int, val_top1: Optional[float]) -> None:
        """Replace best.safetensors when ``val_top1`` (after ``epoch`` epochs) beats every earlier epoch."""
        if self.run_dir is not None and val_top1 is not None and val_top1 > self.best:
            self.best = val_top1
            self.dist.save_module(self.run_dir.best, self.student, {"epoch": str(epoch), "val_top1": str(val_top1)})

    def checkpoint(self, epoch: int, step_in_epoch: int = 0, val_top1: Optional[float] = None) -> None:
        """Write ``ckpt-eEEEE-sSSSSSS`` (student, adapters, optimizer, RNG, position, running sums) and keep the last
        ``output.keep``; ``epoch`` = completed epochs, ``step_in_epoch`` > 0 for a checkpoint inside the next one."""
        self.seen -= self.guard.flush()
        if self.run_dir is None:
            return
        self.update_best(epoch, val_top1)
        sums, seen = self.dist.reduce_sums(self.sums, self.seen)  # distributed: over all ranks; collective
        modules, optimizer = self.dist.full_state(self.saved_modules(), self.optimizer)
        if not self.dist.is_main:
            return
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "seen": seen, "best": self.best,
                "sums": {k: float(v) for k, v in sums.items()}, "scheduler": self.scheduler.state_dict()}
        save_checkpoint(self.run_dir.checkpoints, f"ckpt-e{epoch:04d}-s{step_in_epoch:06d}", modules, optimizer, meta)
        for old in sorted(self.run_dir.checkpoints.glob("ckpt-*.json"))[:-self.spec.output.keep]:
            old.unlink()
            old.with_suffix(".safetensors").unlink(missing_ok=True)

    def _last_checkpoint(self) -> Optional[str]:
        last = latest_checkpoint(self.run_dir.checkpoints) if self.run_dir else None
        return last.name if last else None

    def resume(self) -> tuple[int, list[dict[str, Any]]]:
        """Restore the newest checkpoint of the run directory (the optimizer of the stage that owned it, the
        schedule, RNG states, position and running sums); returns the completed epochs and the metrics rows up to
        them. Without a checkpoint: a warning, and ``(0, [])``."""
        last = latest_checkpoint(self.run_dir.checkpoints) if self.run_dir else None
        if last is None:
            self.reporter.warn(f"no checkpoint in {self.run_dir.path if self.run_dir else 'memory'}: starting from "
                               "scratch")
            return 0, []
        position = read_meta(last)
        owner = self.curriculum.optimizer_owner(position["epoch"], position["step_in_epoch"])
        if owner is not None:
            self.reset_optimizer(owner)
        changed = self.run_dir.spec_changes(self.spec.model_dump(mode="json"))
        listed = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        try:
            meta = load_checkpoint(last, *self.dist.loadable(self.saved_modules(), self.optimizer),
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
        self.start_step, self.seen, self.best = meta["step_in_epoch"], meta["seen"], meta["best"]
        self.sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in meta["sums"].items()}
        if not self.dist.is_main:  # the sums in a checkpoint are over all ranks: counted once, by rank 0
            self.sums, self.seen = {}, 0
        where = f"epoch {meta['epoch'] + 1}, step {self.start_step}" if self.start_step else f"epoch {meta['epoch']} done"
        self.reporter.info(f"resumed from {last.name} ({where})")
        rows = [r for r in self.run_dir.read_metrics() if r["epoch"] <= meta["epoch"]]
        return meta["epoch"], rows
