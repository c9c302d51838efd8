"""Starting data-parallel training: torchrun's environment checked against ``runtime.distributed``, the process
group joined, and the ``kdgraph train --nproc N`` launcher line (docs/distributed.md)."""

from __future__ import annotations

import atexit
import os
from typing import Optional

import torch

from kdgraph.errors import KdgraphError
from kdgraph.session.distributed import LOCAL, DistContext, destroy
from kdgraph.spec.schema import Spec

__all__ = ["LAUNCH_HINT", "TORCHRUN_VARS", "start_distributed", "check_batch", "torchrun_env", "torchrun_argv", "is_main_process"]

LAUNCH_HINT = "torchrun --nproc-per-node N -m kdgraph train SPEC (or: kdgraph train SPEC --nproc N)"
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by torchrun for every process


def torchrun_env() -> Optional[dict[str, int]]:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them; None outside torchrun."""
    if any(name not in os.environ for name in TORCHRUN_VARS):
        return None
    try:
        return {name: int(os.environ[name]) for name in TORCHRUN_VARS}
    except ValueError:
        raise KdgraphError(f"torchrun variables are not integers: "
                           f"{', '.join(f'{n}={os.environ[n]!r}' for n in TORCHRUN_VARS)}",
                           key="runtime.distributed") from None


def is_main_process() -> bool:
    """False only in a torchrun worker of rank > 0 (for printing in the CLI)."""
    return os.environ.get("RANK", "0") == "0"


def torchrun_argv(nproc: int, kdgraph_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m kdgraph ARGS`` (one node)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "kdgraph", *kdgraph_args]


def _nearest_multiples(value: int, step: int) -> str:
    low, high = value // step * step, (value // step + 1) * step
    return f"{low} or {high}" if low > 0 else str(high)


def check_batch(spec: Spec, world: int) -> None:
    """``data.batch_size`` is the global batch: ``world`` processes must divide it evenly."""
    if spec.data.batch_size % world:
        raise KdgraphError(f"data.batch_size {spec.data.batch_size} is the global batch and must be divisible by the "
                           f"{world} processes (each takes batch_size / {world}); use "
                           f"{_nearest_multiples(spec.data.batch_size, world)}", key="data.batch_size",
                           line=spec.line_of("data", "batch_size"))
    if world > 1 and not spec.data.drop_last:
        raise KdgraphError(f"data.drop_last: false keeps a partial last batch, which {world} processes cannot share "
                           "evenly; set data.drop_last: true (the default) for data-parallel training",
                           key="data.drop_last", line=spec.line_of("data", "drop_last"))


def start_distributed(spec: Spec) -> DistContext:
    """Resolve ``runtime.distributed`` against the environment and join the process group when it is on.

    Errors name the spec key and what to change: ddp/fsdp outside torchrun, off under torchrun with several
    processes, CUDA without GPUs (or fewer GPUs than processes on a node), a global batch the world size does
    not divide, SyncBatchNorm on CPU."""
    cfg = spec.runtime

    def fail(message: str, *key: str) -> KdgraphError:
        return KdgraphError(message, key=".".join(key), line=spec.line_of(*key))

    env = torchrun_env()
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if joined else env["WORLD_SIZE"] if env else 1
    mode = cfg.distributed if cfg.distributed != "auto" else ("ddp" if world > 1 else "off")
    if mode == "off":
        if world > 1:
            raise fail(f"runtime.distributed is off, but this is one of {world} processes started by torchrun: each "
                       "would train alone and write the same run directory. Set runtime.distributed: auto (or ddp, "
                       "fsdp), or start a single process without torchrun", "runtime", "distributed")
        return LOCAL
    if not torch.distributed.is_available():
        raise fail(f"runtime.distributed: {mode} needs torch.distributed, which this torch build lacks; "
                   "set runtime.distributed: off", "runtime", "distributed")
    if env is None and not joined:
        raise fail(f"runtime.distributed: {mode} needs the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, "
                   f"MASTER_ADDR, MASTER_PORT); launch with: {LAUNCH_HINT}; or set runtime.distributed: auto to "
                   "train in this one process", "runtime", "distributed")
    if mode == "fsdp" and not _has_fully_shard():
        raise fail(f"runtime.distributed: fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); this "
                   f"is torch {torch.__version__}. Use runtime.distributed: ddp, or upgrade torch", "runtime",
                   "distributed")
    check_batch(spec, world)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"device {cfg.device!r} requested but no CUDA GPU is available; use runtime.device: cpu "
                   "(processes talk over gloo) or auto", "runtime", "device")
    if cfg.device.startswith("cuda:") and world > 1:
        raise fail(f"device {cfg.device!r} would put all {world} processes on one GPU; use runtime.device: cuda or "
                   "auto (each process takes cuda:LOCAL_RANK)", "runtime", "device")
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    local_rank = env["LOCAL_RANK"] if env else (torch.cuda.current_device() if cuda else 0)  # a group of yours
    if cuda and local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise fail(f"process with LOCAL_RANK {local_rank} but this node has {count} GPU(s); start at most {count} "
                   f"processes per node (--nproc-per-node {count}), or set runtime.device: cpu", "runtime",
                   "distributed")
    if cfg.sync_bn and not cuda and world > 1:
        raise fail("SyncBatchNorm needs CUDA devices (torch rejects CPU tensors in it); on CPU set runtime.sync_bn: "
                   "false, and each process normalises with its own shard's batch statistics", "runtime", "sync_bn")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not joined:
        torch.distributed.init_process_group(backend)
        atexit.register(destroy)
    else:
        backend = torch.distributed.get_backend()
    return DistContext(mode=mode, rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(),
                       local_rank=local_rank, backend=backend, sync_bn=cfg.sync_bn, owner=not joined)


def _has_fully_shard() -> bool:
    import torch.distributed.fsdp as fsdp

    return hasattr(fsdp, "fully_shard")
