"""The ecosystem commands (``schema``, ``report``, ``export``, ``bench``, ``teach``) and the logic behind ``inspect --plot / --suggest``.

Registered on the ``kdgraph`` group by ``register(main)`` at the bottom of ``src/kdgraph/cli/main.py``. Thin, like
the rest of the CLI: parse, call the library, print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from kdgraph.cli.handler import handle_errors
from kdgraph.cli.set_args import SetCommand
from kdgraph.errors import KdgraphError

__all__ = ["register", "parse_input_shape", "parse_kwargs", "trace_ref", "suggest_command", "check_plot_target",
           "plot_spec", "plot_model"]


def parse_input_shape(input_shape: Optional[str], refs: tuple[str, ...]) -> tuple[int, ...]:
    """``--input-shape C,H,W``; default 1,28,28 when any model is from the kdgraph zoo, else 3,224,224."""
    if input_shape is None:
        return (1, 28, 28) if any(ref.startswith("kdgraph:") for ref in refs) else (3, 224, 224)
    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise KdgraphError(f"--input-shape {input_shape!r} must be positive integers like 3,224,224")
    return shape


def parse_kwargs(kwargs_json: Optional[str], option: str = "--kwargs") -> dict:
    """The JSON object given to ``option``; {} when it was not given."""
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as err:
        raise KdgraphError(f"{option} is not valid JSON: {err}") from None
    if not isinstance(kwargs, dict):
        raise KdgraphError(f"{option} must be a JSON object like '{{\"num_classes\": 10}}', got {kwargs_json!r}")
    return kwargs


def trace_ref(ref: str, kwargs: dict, shape: tuple[int, ...], kwargs_option: str = "--kwargs"):
    """The layer map of model ``ref`` built with ``kwargs``, probed at ``shape``; a failing probe is a user error
    (naming ``kwargs_option``, the option that gives this model its kwargs)."""
    from kdgraph.models import create_model
    from kdgraph.trace import trace_model

    if ":" not in ref:
        raise KdgraphError(f"{ref!r} is not a model reference like timm:resnet18")
    model = create_model(ref, kwargs)
    try:
        return trace_model(model, shape, ref)
    except ValueError as err:  # the probe forward failed: the input shape does not fit the model
        raise KdgraphError(f"{err}. Pass an --input-shape C,H,W the model accepts (now {','.join(map(str, shape))}), "
                           f"or {kwargs_option} that fit it (in_chans, img_size)") from None


def suggest_command(targets: tuple[str, ...], input_shape: Optional[str], kwargs_json: Optional[str],
                    as_json: bool, teacher_kwargs: Optional[str] = None, student_kwargs: Optional[str] = None) -> None:
    """``inspect TEACHER STUDENT --suggest``: print proposed pairs as YAML (or JSON).

    Each model takes ``--kwargs`` updated by its own ``--teacher-kwargs`` / ``--student-kwargs`` (a ViT at 32 px needs
    ``img_size``, which a ResNet rejects); both see one ``--input-shape``, as both see the same images in training."""
    from kdgraph.trace.suggest import format_pairs_yaml, suggest_pairs

    if len(targets) != 2:
        raise click.UsageError("--suggest takes two model references: kdgraph inspect TEACHER STUDENT --suggest")
    shape = parse_input_shape(input_shape, targets)
    both, options = parse_kwargs(kwargs_json), ("--teacher-kwargs", "--student-kwargs")
    kwargs = [{**both, **parse_kwargs(own, option)} for own, option in zip((teacher_kwargs, student_kwargs), options)]
    teacher_map, student_map = (trace_ref(ref, kw, shape, option) for ref, kw, option in zip(targets, kwargs, options))
    pairs = suggest_pairs(teacher_map, student_map)
    if as_json:
        click.echo(json.dumps(pairs, indent=1))
    else:
        click.echo(format_pairs_yaml(pairs, teacher_map, student_map), nl=False)


def check_plot_target(path: str) -> None:
    """Fail fast, before any model is traced: a known picture suffix (a mistake in the command line, reported with or
    without matplotlib), then matplotlib installed."""
    from kdgraph.cli.plot import check_path, require_matplotlib

    check_path(path)
    require_matplotlib()


def plot_spec(plan, path: str) -> None:
    """``inspect SPEC --plot FILE``: the paired layer maps of a resolved plan (the message goes to stderr: stdout
    may be JSON)."""
    from kdgraph.cli.plot import plot_plan

    click.echo(f"wrote {plot_plan(plan, path)}", err=True)


def plot_model(layer_map, path: str) -> None:
    """``inspect MODEL --plot FILE``: one column of stage-level layers."""
    from kdgraph.cli.plot import plot_layer_maps

    click.echo(f"wrote {plot_layer_maps(path, layer_map, title=f'kdgraph inspect: {layer_map.model}')}", err=True)


def register(main: click.Group) -> None:
    """Add ``schema``, ``report``, ``export``, ``bench`` and ``teach`` to the ``kdgraph`` group."""
    @main.command()
    @click.option("--out", "out", default=None, metavar="FILE", help="Write to FILE instead of printing.")
    @click.option("--markdown", is_flag=True, help="The spec reference as markdown tables (docs/spec_reference.md).")
    @handle_errors
    def schema(out: Optional[str], markdown: bool) -> None:
        """Print the JSON Schema of a spec file (for editors: yaml-language-server, VS Code)."""
        from kdgraph.spec.jsonschema import spec_json_schema
        from kdgraph.spec.reference import spec_reference
        from kdgraph.files import atomic_write_text

        text = spec_reference() if markdown else json.dumps(spec_json_schema(), indent=2) + "\n"
        if out:
            atomic_write_text(out, text)
            click.echo(f"wrote {out}")
        else:
            click.echo(text, nl=False)

    @main.command()
    @click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
    @click.option("--out", default=None, metavar="FILE", help="Picture to write (.png, .svg, .pdf; default "
                  "RUN_DIR/report.png).")
    @handle_errors
    def report(run_dir: str, out: Optional[str]) -> None:
        """Draw the training curves of RUN_DIR (every loss term, train/val top-1, lr per epoch)."""
        from kdgraph.cli.plot import plot_metrics, read_metrics, require_matplotlib

        require_matplotlib()
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        path = plot_metrics(rows, out or Path(run_dir) / "report.png", title=f"{run_dir} — {len(rows)} epoch(s)")
        click.echo(f"wrote {path}")

    @main.command()
    @click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
    @click.option("--out", required=True, metavar="FILE", help="The student's plain state dict (.safetensors).")
    @click.option("--onnx", "onnx_path", default=None, metavar="FILE", help="Also write an ONNX graph (needs onnx).")
    @click.option("--input-shape", default=None, metavar="C,H,W",
                  help="ONNX probe input (default: the spec's data shape).")
    @click.option("--with-heads", is_flag=True, help="Self-distillation: also write the auxiliary heads "
                  "(keys `heads.headN.*`) for early exit.")
    @handle_errors
    def export(run_dir: str, out: str, onnx_path: Optional[str], input_shape: Optional[str], with_heads: bool) -> None:
        """Rebuild RUN_DIR's student, load its trained weights strictly, and write them (and ONNX) out."""
        import shlex

        from kdgraph.rundir.checkpoint import DamagedCheckpoint
        from kdgraph.rundir.export import export_student, weights_note

        shape = parse_input_shape(input_shape, ()) if input_shape else None
        try:
            path = export_student(run_dir, out, onnx=onnx_path, input_shape=shape, with_heads=with_heads)
        except DamagedCheckpoint as err:
            words = ["export", run_dir, "--out", out, *(["--onnx", onnx_path] if onnx_path else []),
                     *(["--input-shape", input_shape] if input_shape else []),
                     *(["--with-heads"] if with_heads else [])]
            name = click.get_current_context().find_root().info_name or "kdgraph"
            err.message = err.explain(" ".join([name, *map(shlex.quote, words)]))
            raise
        note = weights_note(run_dir)
        if note:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {path}" + (f" and {onnx_path}" if onnx_path else ""))

    @main.command(cls=SetCommand)
    @click.argument("spec_path", metavar="SPEC")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
    @click.option("--steps", default=20, show_default=True, help="Timed steps per variant.")
    @click.option("--warmup", default=5, show_default=True, help="Untimed steps per variant after the first one.")
    @click.option("--batch", default=None, type=int, help="Batch size (default: data.batch_size).")
    @handle_errors
    def bench(spec_path: str, overrides: tuple[str, ...], steps: int, warmup: int, batch: Optional[int]) -> None:
        """Time kdgraph's training step for SPEC against a hand-written eager step (same models, taps, losses).

        Synthetic data of the spec's input shape, already on the device; writes nothing (no run directory)."""
        from kdgraph.spec import load_spec
        from kdgraph.train.bench import bench_spec, format_bench

        result = bench_spec(load_spec(spec_path, overrides), steps=steps, warmup=warmup, batch=batch)
        click.echo(format_bench(result))

    @main.command(cls=SetCommand)
    @click.argument("spec_path", metavar="SPEC")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
    @click.option("--views", type=int, default=None, metavar="K",
                  help="Views per image (default: train.epochs, so every epoch has its own view; 1 when nothing is "
                  "augmented).")
    @click.option("--out", default=None, metavar="STORE",
                  help="The store's folder (default: the spec's teacher.store, else stores/NAME).")
    @click.option("--top-k", "top_k", type=int, default=None, metavar="k",
                  help="Store the k largest logits in float16 (and the rest's log-mean-exp) instead of all of them.")
    @click.option("--full-maps", is_flag=True, help="Store every tapped layer whole, also those the pairs pool "
                  "(default: each layer as its pairs read it).")
    @click.option("--shard-images", type=click.IntRange(min=1), default=None, metavar="N",
                  help="Images per shard file (default: about 64 MiB per shard).")
    @click.option("--max-size", default="32GiB", show_default=True, metavar="SIZE",
                  help="Refuse a larger store before any work (20GB, 32GiB, 500MiB; G means GiB).")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
    @click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
                  help="Write the store with N processes on this node (starts torchrun).")
    @handle_errors
    def teach(spec_path: str, overrides: tuple[str, ...], views: Optional[int], out: Optional[str],
              top_k: Optional[int], full_maps: bool, shard_images: Optional[int], max_size: str, quiet: bool,
              nproc: Optional[int]) -> None:
        """Run the teachers of SPEC over K augmented views of the training set and write a teacher store.

        Per image and view: the numbers that rebuild the view's pixels and the teachers' outputs the spec's terms
        read. Prints the store's size first; refuses one above --max-size. Train from it with `teacher.store: STORE`
        (docs/store.md). A stopped teach continues where it stopped."""
        import os
        import sys

        from kdgraph.spec import load_spec
        from kdgraph.store.record_layout import parse_size
        from kdgraph.store.manifest import human_size
        from kdgraph.teach import teach as run_teach
        from kdgraph.session.launch import is_main_process, torchrun_argv, torchrun_env

        max_bytes = parse_size(max_size)
        spec = load_spec(spec_path, overrides)
        if nproc is not None and nproc > 1:
            if torchrun_env() is not None:
                raise click.UsageError("--nproc starts torchrun itself; leave it out when running under torchrun")
            args = [*(["--debug"] if click.get_current_context().obj.get("debug") else []), "teach", spec_path,
                    *(arg for override in overrides for arg in ("--set", override)),
                    *(arg for flag, value in (("--views", views), ("--out", out), ("--top-k", top_k),
                                              ("--shard-images", shard_images)) if value is not None
                      for arg in (flag, str(value))),
                    "--max-size", max_size, *(["--full-maps"] if full_maps else []), *(["--quiet"] if quiet else [])]
            argv = torchrun_argv(nproc, args)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(argv[0], argv)
        result = run_teach(spec, views=views, out=out, top_k=top_k, full_maps=full_maps, shard_images=shard_images,
                           max_bytes=max_bytes, quiet=quiet)
        if is_main_process():
            click.echo(f"wrote {result.path}: {result.views} view(s) of {result.images:,} images, "
                       f"{human_size(result.bytes)} ({result.bytes_per_view:,} bytes per image and view); "
                       f"train from it with teacher.store: {result.path}")
