"""Export a run's student: rebuild the plain architecture from the run's spec, load the trained weights strictly,
write a plain state dict (safetensors) and, optionally, an ONNX graph.

The weights come from ``RUN_DIR/student.safetensors`` (written when training finished) or, when a run was
stopped before that, from the newest checkpoint in ``RUN_DIR/checkpoints`` (its ``student.``-prefixed tensors).
The exported file holds exactly ``student.state_dict()``: it loads into ``build_model(ref, kwargs)`` (and into the
library's own constructor, e.g. ``timm.create_model(name, **kwargs)``) with ``strict=True``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from kdgraph.errors import KdgraphError, RunDirError, WeightsError
from kdgraph.files import save_tensors
from kdgraph.models import build_model, read_state_dict
from kdgraph.models.weights import state_mismatch
from kdgraph.rundir.checkpoint import check_newest, latest_checkpoint, position, read_meta
from kdgraph.rundir.rundir import RunDir
from kdgraph.spec import load_spec
from kdgraph.spec.schema import Spec

__all__ = ["export_student", "student_weights", "weights_note", "export_onnx"]

STUDENT_PREFIX = "student."
"""Checkpoints hold the student, adapters, optimizer and RNG tensors side by side; the student's carry this prefix."""

ONNX_SINGLE_FILE_LIMIT = 1_800_000_000
"""Bytes of parameters above which the ONNX weights go to an external data file (protobuf caps a file at 2 GiB)."""


def student_weights(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The trained student's state dict of a run and the file it came from (final export, else newest checkpoint,
    checked first: a damaged one is a :class:`DamagedCheckpoint` naming the newest intact one)."""
    run = RunDir(run_dir)
    if run.student.is_file():
        return read_state_dict(run.student), run.student
    last = check_newest(run.checkpoints, action="export") if run.checkpoints.is_dir() else None
    if last is None:
        raise WeightsError(f"{str(run.path)!r} has neither student.safetensors nor a checkpoint in checkpoints/: "
                           "did its training finish at least one epoch (or one `output.checkpoint_every` interval)?")
    try:
        tensors_file = last.parent / json.loads(last.read_text())["tensors"]
        tensors = load_file(str(tensors_file), device="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        raise WeightsError(f"checkpoint {str(last)!r} is unreadable ({err})") from None
    state = {k[len(STUDENT_PREFIX):]: v for k, v in tensors.items() if k.startswith(STUDENT_PREFIX)}
    if not state:
        raise WeightsError(f"checkpoint {str(tensors_file)!r} holds no {STUDENT_PREFIX!r} tensors")
    return state, tensors_file


def weights_note(run_dir: str | Path) -> Optional[str]:
    """What an export of ``run_dir`` reads when it is not the final ``student.safetensors`` (a run that did not
    finish): the checkpoint and where it stands, a mid-epoch one said so. None for a finished run."""
    run = RunDir(run_dir)
    last = latest_checkpoint(run.checkpoints) if not run.student.is_file() and run.checkpoints.is_dir() else None
    if last is None:
        return None
    return (f"the run has no student.safetensors (its training did not finish): the student comes from its newest "
            f"checkpoint, {last.stem} ({position(read_meta(last))})")


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path, ref: str) -> None:
    problem = state_mismatch(model, state)
    if problem:
        raise WeightsError(f"{str(source)!r} does not fit {ref} as the run's spec.yaml builds it: {problem}. "
                           "Was spec.yaml edited after training?")
    model.load_state_dict(state, strict=True)


def _input_shape(spec: Spec) -> tuple[int, ...]:
    from kdgraph.plan import build_data

    try:
        return tuple(build_data(spec.data, spec.runtime.seed).input_shape)
    except KdgraphError as err:
        raise KdgraphError(f"the ONNX export needs an example input and the run's data is not available here "
                           f"({err}); pass --input-shape C,H,W") from None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _require_onnx() -> None:
    if not _installed("onnx"):
        raise KdgraphError("ONNX export needs the onnx package, which is not installed: pip install onnx onnxscript")


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dim (input ``input``, output ``logits``); needs ``onnx``."""
    _require_onnx()
    # The dynamo exporter (torch's default) needs onnxscript; without it the TorchScript exporter is used.
    dynamo = _installed("onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    x = torch.zeros((2, *input_shape))
    model = model.eval()
    try:
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
                              external_data=size > ONNX_SINGLE_FILE_LIMIT)
        else:
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as err:  # noqa: BLE001 - exporter failures are many; the message says which op
        raise KdgraphError(f"ONNX export of the student failed ({type(err).__name__}: {str(err)[:500]}); "
                           "the safetensors export is complete") from None
    return path


def _heads(run: RunDir, spec) -> dict:
    """The self-distillation heads saved beside the student (``adapters.safetensors``: ``student.head:LAYER.*``, or
    ``student.headN.*`` from runs made before adapters were keyed by label), as ``heads.headN.*`` in
    ``self_distill.heads`` order."""
    from kdgraph.graph.terms import adapter_key

    if spec.teacher != "self" or not run.adapters.is_file():
        raise RunDirError(f"--with-heads needs a self-distillation run (teacher: self) with adapters.safetensors; "
                          f"{str(run.path)!r} has none")
    adapters = load_file(str(run.adapters))
    out = {}
    for i, name in enumerate(spec.self_distill.heads):
        for prefix in (f"student.{adapter_key(f'head:{name}')}.", f"student.head{i}."):
            out.update({f"heads.head{i}." + k[len(prefix):]: v for k, v in adapters.items() if k.startswith(prefix)})
    return out


def export_student(run_dir: str | Path, out: str | Path, onnx: Optional[str | Path] = None,
                   input_shape: Optional[tuple[int, ...]] = None, with_heads: bool = False) -> Path:
    """Rebuild the run's student, load its trained weights strictly, write ``out`` (and ``onnx``); returns ``out``.

    ``with_heads`` (self-distillation runs) adds the auxiliary heads from adapters.safetensors as ``heads.headN.*``.
    """
    run = RunDir(run_dir)
    if not run.path.exists():
        raise RunDirError(f"{str(run.path)!r} does not exist; give the run directory a training wrote (its "
                          "`output:`, e.g. runs/quickstart)")
    if not run.spec.is_file():
        raise RunDirError(f"{str(run.path)!r} is not a kdgraph run directory (no spec.yaml)")
    if onnx is not None:
        _require_onnx()  # before anything is written
    spec = load_spec(run.spec)
    ref, kwargs = spec.student.model, spec.student.kwargs
    if ref.startswith("live:"):
        raise RunDirError(f"the student of {str(run.path)!r} is {ref}, a module passed from Python, which kdgraph "
                          f"cannot rebuild; load {str(run.student)!r} into that module's class with "
                          "load_state_dict(load_file(...), strict=True) instead")
    state, source = student_weights(run.path)
    model = build_model(ref, kwargs)
    _load_strict(model, state, source, ref)
    out = Path(out)
    tensors = dict(model.state_dict())
    if with_heads:
        tensors.update(_heads(run, spec))
    save_tensors(out, tensors, metadata={"kdgraph.model": ref, "kdgraph.kwargs": json.dumps(kwargs),
                                                    "kdgraph.source": str(source)})
    if onnx is not None:
        export_onnx(model, onnx, input_shape or _input_shape(spec))
    return out
