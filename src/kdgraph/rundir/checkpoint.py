"""Checkpoints: tensors in safetensors, everything else in a small JSON file; every write is atomic.

A checkpoint ``ckpt-e0003-s000000`` (3 epochs done, 0 steps into the 4th) is ``ckpt-e0003-s000000.safetensors`` (student, adapters, optimizer tensors, RNG state) plus
``ckpt-e0003-s000000.json`` (epoch, step, optimizer hyper-parameters, scheduler state). No pickle anywhere.
"""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from kdgraph.errors import KdgraphError
from kdgraph.files import atomic_write_text, save_tensors

__all__ = ["CheckpointMismatch", "DamagedCheckpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "newest_intact", "check_newest", "damage", "position", "optimizer_to_flat", "optimizer_from_flat",
           "match_param_layout"]


class CheckpointMismatch(KdgraphError):
    """A checkpoint whose tensors do not fit the modules or optimizer of the spec being resumed."""


class DamagedCheckpoint(KdgraphError):
    """The newest checkpoint of a run cannot be read. ``damaged``: the files of the unreadable checkpoints newer
    than ``intact``, the newest checkpoint that reads (None when none does). :meth:`explain` says how to go on from
    ``intact``: set the damaged files aside, then the command a caller knows (``kdgraph train ... --resume``)."""

    def __init__(self, problem: str, damaged: list[Path], intact: Optional[Path], action: str = "resume"):
        self.problem, self.damaged, self.intact, self.action = problem, damaged, intact, action
        super().__init__(self.explain(), key="output" if action == "resume" else None)

    def explain(self, then: Optional[str] = None) -> str:
        """The message, ending with the shell commands that go on from the newest intact checkpoint, ``then`` (a
        command line) last."""
        if self.intact is None:
            return f"{self.problem}; no older checkpoint is intact: " + (
                "start over with --overwrite (or another `output:`)" if self.action == "resume" else
                f"there is nothing to {self.action}")
        aside = " && ".join(f"mv {shlex.quote(str(p))} {shlex.quote(str(p) + '.damaged')}" for p in self.damaged)
        where = position(read_meta(self.intact))
        return (f"{self.problem}; the newest intact checkpoint is {self.intact.stem} ({where})"
                f". To {self.action} from it, set the damaged files aside: {aside}"
                + (f" && {then}" if then else f", then {self.action} again"))


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    return tensors, {"python": [version, list(internal), gauss], "numpy": [int(pos), int(has_gauss), float(cached)]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    pos, has_gauss, cached = meta["numpy"]
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: str | Path, name: str, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write ``name.safetensors`` then ``name.json`` (the JSON last: its presence marks a complete checkpoint)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    save_tensors(directory / f"{name}.safetensors", tensors)
    full = dict(meta, optimizer=opt_meta, rng=rng_meta, tensors=f"{name}.safetensors")
    atomic_write_text(directory / f"{name}.json", json.dumps(full, indent=1))
    return directory / f"{name}.json"


def read_meta(meta_path: str | Path) -> dict[str, Any]:
    """A checkpoint's JSON metadata; an unreadable file is a user-facing error naming it."""
    try:
        meta = json.loads(Path(meta_path).read_text())
        meta["epoch"], meta["step_in_epoch"]  # noqa: B018 - the keys every checkpoint has
        return meta
    except Exception as err:  # noqa: BLE001 - truncated, garbage or foreign: all mean "cannot resume from it"
        raise KdgraphError(f"checkpoint {str(meta_path)!r} is unreadable ({type(err).__name__}: {err}); delete it "
                           "to resume from an earlier one, or start over with --overwrite", key="output") from None


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = sorted(Path(directory).glob("ckpt-*.json"))
    return found[-1] if found else None


def position(meta: dict[str, Any]) -> str:
    """``epoch 3 done`` or ``mid-epoch: epoch 4, step 120``: where a checkpoint's metadata puts the run."""
    if meta["step_in_epoch"]:
        return f"mid-epoch: epoch {meta['epoch'] + 1}, step {meta['step_in_epoch']}"
    return f"epoch {meta['epoch']} done"


def damage(meta_path: str | Path) -> Optional[tuple[Path, str]]:
    """The file of checkpoint ``meta_path`` that cannot be read and why, or None when it reads. Cheap: the JSON and
    the safetensors header, which must cover the whole file (a truncated file does not), not the tensors."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
        meta["epoch"], meta["step_in_epoch"]  # noqa: B018 - the keys every checkpoint has
        tensors = meta_path.parent / meta["tensors"]
    except Exception as err:  # noqa: BLE001 - truncated, garbage or foreign: all mean "cannot resume from it"
        return meta_path, f"it is unreadable ({type(err).__name__}: {err})"
    if not tensors.is_file():
        return tensors, "it is missing"
    try:
        with safe_open(str(tensors), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        if "not fully covered" in str(err):
            return tensors, f"it is truncated ({tensors.stat().st_size:,} bytes, fewer than its header lists)"
        return tensors, f"it is corrupted ({err})"
    return None


def newest_intact(directory: str | Path) -> tuple[Optional[Path], list[tuple[Path, Path, str]]]:
    """The newest checkpoint (its JSON) that reads, and every newer one that does not: ``(json, bad file, why)``."""
    broken = []
    for meta_path in sorted(Path(directory).glob("ckpt-*.json"), reverse=True):
        problem = damage(meta_path)
        if problem is None:
            return meta_path, broken
        broken.append((meta_path, *problem))
    return None, broken


def check_newest(directory: str | Path, action: str = "resume") -> Optional[Path]:
    """The newest checkpoint in ``directory`` (None without one), checked before any work relies on it: a damaged
    one is a :class:`DamagedCheckpoint` naming the damaged file and the newest intact checkpoint, if any."""
    intact, broken = newest_intact(directory)
    if not broken:
        return intact
    _, bad, why = broken[0]
    files = [f for meta_path, _, _ in broken for f in (meta_path.with_suffix(".safetensors"), meta_path) if f.exists()]
    raise DamagedCheckpoint(f"checkpoint file {str(bad)!r} is damaged: {why}", files, intact, action)


def _renamed(tensors: dict[str, torch.Tensor], renames: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Tensor names under an old prefix moved to its new one, where the checkpoint has nothing under the new."""
    for old, new in renames.items():
        if any(k.startswith(old) for k in tensors) and not any(k.startswith(new) for k in tensors):
            tensors = {new + k[len(old):] if k.startswith(old) else k: v for k, v in tensors.items()}
    return tensors


def load_checkpoint(meta_path: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Restore modules, optimizer and RNG from a checkpoint; returns its JSON metadata.

    ``renames`` maps old tensor-name prefixes to new ones (adapters were keyed by pair index before they were keyed
    by term label), applied where the checkpoint holds only the old names."""
    meta_path = Path(meta_path)
    meta = read_meta(meta_path)
    tensors_path = meta_path.parent / str(meta.get("tensors"))
    try:
        tensors = _renamed(load_file(str(tensors_path)), renames or {})
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        raise KdgraphError(f"checkpoint file {str(tensors_path)!r} is unreadable ({err})", key="output") from None
    try:
        for prefix, module in modules.items():
            own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(own, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_from_flat(tensors, meta["optimizer"]))
    except (RuntimeError, KeyError, ValueError, IndexError) as err:  # another student, adapters or optimizer
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise CheckpointMismatch(f"checkpoint {str(meta_path)!r} does not fit this spec ({type(err).__name__}: "
                                 f"{detail[:300]})", key="output") from None
    if optimizer is not None:
        match_param_layout(optimizer)  # saved contiguous; fused kernels need the parameters' (channels_last) layout
    set_rng_state(tensors, meta["rng"])
    return meta


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum, Adam moments) its parameter's memory layout.

    A state loaded from a checkpoint is contiguous while a ``channels_last`` parameter is not; fused optimizer
    kernels walk both as flat arrays and would silently mix up elements (foreach kernels handle strides)."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            # plain tensors only: FSDP2's sharded (DTensor) states keep the layout FSDP gave them
            if type(value) is torch.Tensor and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
