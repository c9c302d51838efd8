"""The ``kdgraph`` command: thin click wrappers around the library. User errors exit with code 2, no traceback."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import click

from kdgraph import __version__
from kdgraph.cli.handler import handle_errors
from kdgraph.cli.set_args import SetCommand

if TYPE_CHECKING:
    from kdgraph.session.signals import Interrupted

__all__ = ["main"]

_PYTHON_SHOWWARNING = warnings.showwarning


def _debug_flag(ctx: click.Context, param: click.Parameter, debug: bool) -> None:
    """``--debug`` after a command (``kdgraph train --debug x.yaml``) does what it does before it."""
    if debug:
        ctx.ensure_object(dict)["debug"] = True
        warnings.showwarning = _PYTHON_SHOWWARNING


def _print_warnings(plan) -> None:
    """The plan's warnings (a teacher without weights, a blown-up student map), as ``train`` prints them."""
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)


def _train_command(spec_path: str, overrides: tuple[str, ...], quiet: bool, nproc: Optional[int],
                   resume: bool) -> str:
    """This ``train`` command line again, shell-quoted: every ``--set`` kept, so it names the same run directory."""
    from kdgraph.session.launch import torchrun_env

    ctx = click.get_current_context()
    env = torchrun_env()
    if env is not None and os.environ.get("LOCAL_WORLD_SIZE") == str(env["WORLD_SIZE"]):  # one node: --nproc N
        nproc = env["WORLD_SIZE"]
    words = ["train", *(["--debug"] if ctx.obj.get("debug") else []), spec_path,
             *(word for override in overrides for word in ("--set", override)), *(["--quiet"] if quiet else []),
             *(["--nproc", str(nproc)] if nproc else []), *(["--resume"] if resume else [])]
    return " ".join([ctx.find_root().info_name or "kdgraph", *map(shlex.quote, words)])


def _how_to_go_on(err: "Interrupted", command: Callable[[bool], str]) -> str:
    """What to type after an interruption: resume from the checkpoint, or start again (in the kept run directory,
    or afresh when nothing was left)."""
    if err.checkpoint:
        return f". Resume with: {command(True)}"
    return f". Start again with: {command(err.run_dir is not None)}"


def _is_spec(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdgraph")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """kdgraph: declarative, graph-based feature distillation for PyTorch."""
    ctx.ensure_object(dict)["debug"] = debug
    if not debug:
        warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    """kdgraph's own warnings as one line, ``warning: ...`` (not the file, line and source of where they were
    raised); anything else as Python shows it."""
    if category.__module__.startswith("kdgraph."):
        click.echo(f"warning: {message}", err=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


@main.command(cls=SetCommand)
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option("--dry-run", is_flag=True, help="Resolve models, data and pairs, print the plan, train nothing.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train with N processes on this node: starts torchrun (see docs/distributed.md).")
@handle_errors
def train(spec_path: str, overrides: tuple[str, ...], overwrite: bool, resume: bool, quiet: bool,
          dry_run: bool, nproc: int | None) -> None:
    """Train the student of SPEC (a YAML file)."""
    from kdgraph.cli.render import print_plan, print_summary
    from kdgraph.errors import KdgraphError
    from kdgraph.spec import load_spec
    from kdgraph.train import train as run_train
    from kdgraph.session.launch import check_batch, is_main_process, torchrun_argv, torchrun_env
    from kdgraph.rundir.checkpoint import DamagedCheckpoint
    from kdgraph.session.signals import Interrupted
    from kdgraph.plan import resolve_plan

    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other")
    spec = load_spec(spec_path, overrides)
    if dry_run:
        plan = resolve_plan(spec)
        print_plan(plan)
        _print_warnings(plan)
        return
    # one process needs torchrun only when ddp/fsdp is asked for (a 1-process group: e.g. to measure DDP's overhead)
    if nproc is not None and (nproc > 1 or spec.runtime.distributed in ("ddp", "fsdp")):
        if torchrun_env() is not None:
            raise click.UsageError("--nproc starts torchrun itself; leave it out when running under torchrun")
        if spec.runtime.distributed == "off":
            raise KdgraphError(f"--nproc {nproc} needs data parallelism, but runtime.distributed is off; set it to "
                               "auto, ddp or fsdp", key="runtime.distributed",
                               line=spec.line_of("runtime", "distributed"))
        check_batch(spec, nproc)  # fail here once rather than in every process
        args = [*(["--debug"] if click.get_current_context().obj.get("debug") else []), "train", spec_path,
                *(arg for override in overrides for arg in ("--set", override)),
                *(flag for flag, on in (("--overwrite", overwrite), ("--resume", resume), ("--quiet", quiet)) if on)]
        argv = torchrun_argv(nproc, args)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
    try:
        result = run_train(spec, overwrite=overwrite, resume=resume, quiet=quiet)
    except Interrupted as err:
        err.message += _how_to_go_on(err, lambda again: _train_command(spec_path, overrides, quiet, nproc, again))
        raise
    except DamagedCheckpoint as err:
        err.message = err.explain(_train_command(spec_path, overrides, quiet, nproc, True))
        raise
    if is_main_process():
        print_summary(result)


@main.command(cls=SetCommand)
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
@handle_errors
def validate(spec_path: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC: schema, models, weights, data and every pair, without training."""
    from kdgraph.cli.render import print_plan
    from kdgraph.spec import load_spec
    from kdgraph.plan import resolve_plan

    plan = resolve_plan(load_spec(spec_path, overrides))
    print_plan(plan, maps=False)
    _print_warnings(plan)
    click.echo(f"{spec_path}: ok")


@main.command(cls=SetCommand)
@click.argument("targets", metavar="MODEL|SPEC|STORE [STUDENT]", nargs=-1, required=True)
@click.option("--input-shape", default=None, metavar="C,H,W", help="Probe input shape for a model (default 3,224,224; "
              "1,28,28 for the kdgraph zoo).")
@click.option("--kwargs", "kwargs_json", default=None, metavar="JSON", help="Model constructor kwargs as JSON (with "
              "--suggest: for both models).")
@click.option("--teacher-kwargs", "teacher_kwargs", default=None, metavar="JSON",
              help="With --suggest: the teacher's kwargs (over --kwargs).")
@click.option("--student-kwargs", "student_kwargs", default=None, metavar="JSON",
              help="With --suggest: the student's kwargs (over --kwargs).")
@click.option("--json", "as_json", is_flag=True, help="Print the layer map(s) as JSON.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
@click.option("--plot", default=None, metavar="FILE", help="Also draw the layer map(s) and pairs (.png, .svg, .pdf).")
@click.option("--suggest", is_flag=True, help="With two models TEACHER STUDENT: propose pairs stage by stage.")
@handle_errors
def inspect(targets: tuple[str, ...], input_shape: str | None, kwargs_json: str | None, teacher_kwargs: str | None,
            student_kwargs: str | None, as_json: bool, overrides: tuple[str, ...], plot: str | None,
            suggest: bool) -> None:
    """Show the traced layer map of MODEL (e.g. timm:resnet18), or both maps of SPEC with its pairs, or what a
    teacher STORE (a folder written by kdgraph teach) holds.

    `inspect TEACHER STUDENT --suggest` prints proposed pairs as YAML for `distill.pairs`."""
    from kdgraph.cli import commands
    from kdgraph.cli.render import inputs_json, print_layer_map, print_plan, traced_json
    from kdgraph.errors import KdgraphError
    from kdgraph.spec import load_spec
    from kdgraph.plan import resolve_plan

    if suggest:
        return commands.suggest_command(targets, input_shape, kwargs_json, as_json, teacher_kwargs, student_kwargs)
    if teacher_kwargs or student_kwargs:
        raise click.UsageError("--teacher-kwargs and --student-kwargs go with --suggest (two models); for one model "
                               "use --kwargs")
    if len(targets) != 1:
        raise click.UsageError("inspect takes one MODEL or SPEC; two models only with --suggest")
    target = targets[0]
    if Path(target).is_dir():
        from kdgraph.store.manifest import describe, read_manifest

        manifest = read_manifest(target)
        click.echo(json.dumps(manifest, indent=1) if as_json else "\n".join(describe(target, manifest)))
        return
    if plot:
        commands.check_plot_target(plot)
    if _is_spec(target):
        plan = resolve_plan(load_spec(target, overrides))
        if as_json:
            maps = {name: m.to_json() for name, m in plan.teacher_maps.items()}
            click.echo(json.dumps({"student": plan.student_map.to_json(),
                                   "teacher": plan.teacher_map.to_json() if plan.teacher_map else None,
                                   **({"teachers": maps} if len(maps) > 1 else {}), "pairs": plan.pairs_json(),
                                   "traced": traced_json(plan), "inputs": inputs_json(plan)},
                                  indent=1))
        else:
            print_plan(plan)
        _print_warnings(plan)
        if plot:
            commands.plot_spec(plan, plot)
        return
    kwargs = commands.parse_kwargs(kwargs_json)
    shape = commands.parse_input_shape(input_shape, (target,))
    if ":" not in target:
        raise KdgraphError(f"{target!r} is neither a spec file nor a model reference like timm:resnet18")
    layer_map = commands.trace_ref(target, kwargs, shape)
    if as_json:
        click.echo(json.dumps(layer_map.to_json(), indent=1))
    else:
        print_layer_map(layer_map)
    if plot:
        commands.plot_model(layer_map, plot)


from kdgraph.cli.commands import register; register(main)  # noqa: E402,E702 - schema, report, export
for _command in main.commands.values():  # `--debug` is accepted after every command too
    _command.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, callback=_debug_flag,
                                        help="Show full tracebacks for errors."))

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
