"""``train(spec)``: the whole pipeline, orchestrated. Resolve the spec into a plan, prepare the run directory, let a
:class:`~kdgraph.train.trainer.Trainer` run the epochs, export the student and write the summary; then, when asked,
the same student trained without a teacher (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.text import Text
from torch import nn

from kdgraph.errors import KdgraphError, plural
from kdgraph.eval.evaluate import teachers_top1
from kdgraph.graph.build import prune_masks
from kdgraph.graph.lookup import Teachers
from kdgraph.plan import Plan, resolve_plan
from kdgraph.rundir.checkpoint import check_newest
from kdgraph.rundir.run_state import finished, previous_summary, stopped_by, tidy_on_failure
from kdgraph.rundir.rundir import RunDir, open_run_dir
from kdgraph.session.distributed import DistContext
from kdgraph.session.progress import Reporter, epoch_fields, epoch_legend
from kdgraph.session.session import Session
from kdgraph.session.signals import Interrupted
from kdgraph.spec.schema import Spec
from kdgraph.train.guard import NumericalError
from kdgraph.train.optim import schedule_warning
from kdgraph.train.tb import TensorBoardLogger
from kdgraph.train.teacher_cache import cache_is_exact
from kdgraph.train.trainer import Trainer

__all__ = ["TrainResult", "train", "NumericalError", "Interrupted"]


@dataclass
class TrainResult:
    """What a run returns: the trained student (plain architecture), per-epoch metrics, a summary, the run
    directory (None in memory) and the resolved plan (graph, pairs and their adapters, layer maps)."""

    student: nn.Module
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Optional[Path]
    plan: Plan = field(repr=False)


def train(spec: Spec, *, student: Optional[nn.Module] = None, teacher: Teachers = None,
          overwrite: bool = False, resume: bool = False, quiet: bool = False, write: bool = True,
          reporter: Optional[Reporter] = None) -> TrainResult:
    """Run the whole pipeline for ``spec``; live ``student``/``teacher`` modules replace the spec's references
    (``teacher`` may be a dict by teacher name).

    Nothing is written before the spec, models, data and pairs all check out. ``write=False`` keeps it in memory.
    A run directory this call created is removed again if it fails or is interrupted before anything was trained.
    """
    session = Session.start(spec, quiet=quiet, reporter=reporter)  # before the plan: its models' weights are seeded
    plan = resolve_plan(spec, student, teacher)
    run_dir = open_run_dir(spec.run_dir, session.dist) if write else None
    with tidy_on_failure(run_dir if session.dist.is_main else None):
        return _run(plan, session, run_dir, overwrite=overwrite, resume=resume, quiet=quiet)


def _prepare(plan: Plan, dist: DistContext, run_dir: Optional[RunDir], overwrite: bool,
             resume: bool) -> Optional[TensorBoardLogger]:
    """The run directory made (or checked for resuming), InDistill's masks written; the TensorBoard logger."""
    spec = plan.spec
    wants_tb = "tensorboard" in spec.runtime.log and run_dir is not None and dist.is_main
    if wants_tb:
        TensorBoardLogger.check_available()
    if run_dir is None:
        return None
    try:
        run_dir.prepare(spec.model_dump(mode="json"), overwrite=overwrite, resume=resume)
    except KdgraphError as err:
        err.line = err.line or spec.line_of("output")
        raise
    masks = prune_masks(plan.pairs)
    if masks:
        run_dir.write_json(run_dir.path / "prune_masks.json", masks)
    return TensorBoardLogger(run_dir.path / "tensorboard") if wants_tb else None


def _announce(plan: Plan, trainer: Trainer, reporter: Reporter, known: dict[str, Any]) -> dict[str, Any]:
    """The plan in a few lines, its warnings, and the teachers' test top-1 (the summary's first entries)."""
    spec, rt = plan.spec, trainer.rt
    reporter.info(Text.assemble((spec.name, "bold"), f": {plan.data.description}; device {rt.device}, {rt.precision}"
                                f"{', compiled' if rt.compile_mode else ''}"))
    for report in plan.pairs:
        steps = " → ".join(report.adapters.student_steps) or "identity"
        reporter.info(f"  {report.label}: {report.student.shape} → {report.teacher.shape} via {steps}")
    for warning in plan.warnings:
        reporter.warn(warning)
    summary: dict[str, Any] = {"name": spec.name, "data": plan.data.description}
    for key, score in teachers_top1(plan.teacher_classifiers(), plan.teacher_maps, plan.data, spec, rt,
                                    trainer.dist, known, reporter).items():
        summary[key] = score
        reporter.info(f"  {key.removeprefix('teacher_top1/') if '/' in key else 'teacher'} top-1 {score:.2%}")
    if warning := schedule_warning(spec.train.schedule, spec.train.epochs):
        reporter.warn(warning)
    return summary


def _fit(trainer: Trainer, session: Session, rows: list[dict[str, Any]], start_epoch: int,
         run_dir: Optional[RunDir], tb: Optional[TensorBoardLogger]) -> list[dict[str, Any]]:
    """The epochs from ``start_epoch`` on: a metrics row, a checkpoint (or best.safetensors) after each; a stop
    signal ends the run after its checkpoint."""
    spec, dist, terms, reporter = trainer.spec, trainer.dist, trainer.graph.terms, session.reporter
    best_key = "val_" + spec.eval.metrics[0]
    reporter.clock.begin(spec.name, (spec.train.epochs - start_epoch) * trainer.steps - trainer.start_step)
    explained = False
    with session.stop_on_signals(trainer):
        for epoch in range(start_epoch, spec.train.epochs):
            row = trainer.epoch(epoch)
            stop = dist.stop_agreed(trainer)  # collective under torchrun: every rank asks once per epoch
            if row is not None:
                rows.append(row)
                if not explained:
                    for line in epoch_legend(row, {t.label: t.weight for t in terms},
                                             any(t.warmup_epochs > 0 for t in terms)):
                        reporter.info(line)
                    explained = True
                weights = {t.label: t.weight * t.warmup(epoch) for t in terms}  # this epoch's, as in the total
                reporter.fields(epoch_fields(row, weights, reporter.clock.describe()))
                if tb is not None:
                    tb.log(row, step=row["epoch"])
                if run_dir is not None:
                    run_dir.write_metrics(rows)
                    if (epoch + 1) % spec.output.checkpoint_epochs == 0 or epoch + 1 == spec.train.epochs or stop:
                        trainer.checkpoint(epoch + 1, val_top1=row.get(best_key))
                    else:  # best.safetensors follows every epoch, not only the checkpointed ones
                        trainer.update_best(epoch + 1, row.get(best_key))
            if stop and (row is None or epoch + 1 < spec.train.epochs):
                raise stopped_by(trainer.stop_signal, run_dir)
    return rows


def _wants_baseline(spec: Spec) -> bool:
    return spec.train.baseline and (spec.teacher is not None or bool(spec.teachers))


def _baseline_name(spec: Spec) -> str:
    return f"{spec.name}-baseline"


def _baseline_dir(spec: Spec) -> Path:
    return Path(spec.run_dir) / "baseline"


def _baseline_spec(spec: Spec) -> Spec:
    doc = spec.model_dump(mode="json")
    doc.update(teacher=None, teachers=[], distill={}, self_distill=None, name=_baseline_name(spec))
    doc["train"].update(baseline=False, ce_weight=spec.train.ce_weight or 1.0)
    doc["output"] = str(_baseline_dir(spec))
    return Spec.model_validate(doc)


def _baseline(spec: Spec, summary: dict[str, Any], reporter: Reporter, run_dir: Optional[RunDir], resume: bool,
              quiet: bool) -> None:
    """The same student trained without distillation, same budget, in ``RUN_DIR/baseline``; its scores go into
    ``summary`` as ``baseline_METRIC``."""
    reporter.info("baseline: the same student trained without distillation, same budget")
    base_spec = _baseline_spec(spec)
    again = resume and Path(base_spec.run_dir).is_dir()  # a baseline already begun resumes; none yet: a fresh one
    base = train(base_spec, overwrite=not again, resume=again, quiet=quiet, write=run_dir is not None,
                 reporter=reporter)
    summary.update({f"baseline_{m}": base.summary[f"student_{m}"] for m in spec.eval.metrics})
    if run_dir is not None:
        run_dir.write_json(run_dir.summary, summary)


def _run(plan: Plan, session: Session, run_dir: Optional[RunDir], *, overwrite: bool, resume: bool,
         quiet: bool) -> TrainResult:
    spec, student, dist, reporter = plan.spec, plan.student, session.dist, session.reporter
    rt = session.runtime(plan.runtime)
    tb = _prepare(plan, dist, run_dir, overwrite, resume)
    if resume and run_dir is not None:  # a damaged checkpoint found now, not after the teacher passes
        try:
            check_newest(run_dir.checkpoints)
        except KdgraphError as err:
            err.line = err.line or spec.line_of("output")
            raise
    done = resume and run_dir is not None and finished(run_dir, spec.train.epochs)  # nothing left to train
    trainer = Trainer(plan, runtime=rt, reporter=reporter, run_dir=run_dir, dist=dist)
    known = previous_summary(run_dir) if done else {}  # a finished run's teacher top-1 is not measured again
    if plan.store is not None:  # measured by kdgraph teach: a store run never runs its teachers
        known = {**plan.store.known_top1(plan.data, len(plan.teachers)), **known}
    summary = _announce(plan, trainer, reporter, known)
    if plan.store is not None:
        reporter.info(f"  {plan.store.describe(spec.train.epochs)}")
    if done:
        n = spec.train.epochs
        reporter.info(f"  {run_dir.path}: {'all' if n > 1 else 'its'} {plural(n, 'epoch')} {'are' if n > 1 else 'is'} "
                      "done; nothing to train")
    else:
        trainer.cache_teachers()
    if trainer.cache is not None and not cache_is_exact(spec, plan.data):
        reporter.warn("teacher.cache: outputs: cached teachers saw each training image once (un-augmented, or one "
                      "random crop of imagefolder's), so they no longer share the student's view (the fixed-teacher "
                      "ablation)")
    start_epoch, rows = trainer.resume() if resume else (0, [])
    if _wants_baseline(spec) and not (resume and finished(RunDir(_baseline_dir(spec)), spec.train.epochs)):
        reporter.clock.plan(_baseline_name(spec), spec.train.epochs * trainer.steps)  # in the time left, from now
    rows = _fit(trainer, session, rows, start_epoch, run_dir, tb)
    if tb is not None:
        tb.close()
    for metric in spec.eval.metrics:
        summary[f"student_{metric}"] = rows[-1].get(f"val_{metric}") if rows else None
    summary["epochs"] = spec.train.epochs
    if run_dir is not None:
        dist.save_module(run_dir.student, student)
        if trainer.adapters.state_dict():  # a run without adapters or loss modules (the baseline) writes none
            dist.save_module(run_dir.adapters, trainer.adapters)
        run_dir.write_json(run_dir.summary, summary)  # now, so a run resumed during its baseline can reuse it
    if _wants_baseline(spec):
        _baseline(spec, summary, reporter, run_dir, resume, quiet)
    del trainer  # its DDP/FSDP wrapper holds the process group that finish() closes
    session.finish(student)
    return TrainResult(student=student, metrics=rows, summary=summary, run_dir=run_dir.path if run_dir else None,
                       plan=plan)
