"""Data-parallel training on torch.distributed (DDP or FSDP2) under torchrun; docs/distributed.md.

torchrun starts one process per device. Each builds the same data, models and graph from the spec; then
``start_distributed`` joins the process group (NCCL on GPUs, gloo on CPU) and :class:`DistContext` does what
differs from one process: the student and the adapters are wrapped (the frozen teacher stays a plain replica),
each rank trains on its slice of every global batch, metrics are summed over ranks, and only rank 0 prints and
writes. Every helper is the identity in a single process (``LOCAL``), so the loop has one code path. Joining
the group and checking the environment against the spec is ``kdgraph.session.launch``.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from kdgraph.data.datasets import select
from kdgraph.files import save_tensors
from kdgraph.graph.terms import TermKind
from kdgraph.runtime import Runtime
from kdgraph.session.progress import Reporter

__all__ = ["DistContext", "LOCAL"]

def _is_dtensor(value: Any) -> bool:
    return type(value).__name__ == "DTensor" and hasattr(value, "full_tensor")


def _full(value: Any) -> Any:
    """A DTensor gathered to a full CPU tensor (collective); other tensors detached on CPU; the rest unchanged."""
    if _is_dtensor(value):
        value = value.full_tensor()
    return value.detach().cpu() if torch.is_tensor(value) else value


class _Gathered:
    """A state dict gathered in advance, offered where a module or an optimizer is expected (``state_dict()``)."""

    def __init__(self, state: dict[str, Any]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class _ShardedModule:
    """``load_state_dict`` of a full state dict into a module holding FSDP2 shards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True, strict=strict))


class _ShardedOptimizer:
    """``load_state_dict`` of a full optimizer state into an optimizer over FSDP2 shards."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.tensor import distribute_tensor

        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for idx in sorted(state["state"], key=int):
            param, entry = params[int(idx)], state["state"][idx]
            if _is_dtensor(param):
                for key, value in entry.items():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        entry[key] = distribute_tensor(value.to(param.device_mesh.device_type, param.dtype),
                                                       param.device_mesh, param.placements)
        self.optimizer.load_state_dict(state)


class _Logits(nn.Module):
    """The student's logits through its (FSDP-managed) feature extractor, for evaluation."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.training = extractor.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)["output"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``mode`` off/ddp/fsdp, rank, world size, and the helpers that depend on them."""

    mode: str = "off"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    sync_bn: bool = False
    owner: bool = False  # this context created the process group and destroys it in finish()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world) for the training loader."""
        return self.rank, self.world

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    @property
    def _several(self) -> bool:
        return self.enabled and self.world > 1

    # -- setup ----------------------------------------------------------------------------------------------------
    def reporter(self, reporter: Reporter) -> Reporter:
        """``reporter`` on rank 0; a silent one (no lines, no bar, no warnings) on the other ranks."""
        return reporter if self.is_main else Reporter(quiet=True, console=Console(stderr=True, quiet=True))

    def runtime(self, rt: Runtime, reporter: Reporter) -> Runtime:
        """Pin CUDA to cuda:LOCAL_RANK. FSDP runs eagerly (its hooks and torch.compile are not combined here) and
        in the contiguous layout (fully_shard rejects channels-last parameters)."""
        if not self.enabled:
            return rt
        if rt.device.type == "cuda":
            rt = dataclasses.replace(rt, device=torch.device("cuda", self.local_rank))
        if self.mode == "fsdp" and (rt.compile_mode is not None or rt.channels_last):
            reporter.info("  fsdp: eager and contiguous (runtime.compile and runtime.channels_last are not used)")
            rt = dataclasses.replace(rt, compile_mode=None, channels_last=False)
        return rt

    def wrap(self, graph: nn.Module, find_unused: bool = False) -> nn.Module:
        """The module the training step calls: ``graph`` itself, DDP over it, or it with FSDP2 ``fully_shard``.

        The teacher is outside the graph's module tree, so only the student and the adapters are wrapped; the
        teacher stays a plain replica on every rank. DDP must be told when a step may leave parameters without a
        gradient: ``find_unused`` (a curriculum switches terms off), or no term uses the student's logits (its
        classifier is then unused)."""
        if not self.enabled:
            return graph
        if self.sync_bn:
            graph.student = nn.SyncBatchNorm.convert_sync_batchnorm(graph.student)
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if self.backend == "nccl" else None
            find_unused = find_unused or not any(term.kind in (TermKind.CE, TermKind.LOGITS) for term in graph.terms)
            return DistributedDataParallel(graph, device_ids=ids, find_unused_parameters=find_unused)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self._device.type, (self.world,))  # explicit: gloo on a machine with GPUs is CPU
        with torch.no_grad():  # fully_shard keeps each rank's slice of its own values: start from rank 0's
            for tensor in [*graph.parameters(), *graph.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)
        # Every adapter module holding parameters is its own unit (innermost first): adapters are small, and parts
        # of them are called outside their parent's forward (a self-distillation head's `adapt`, evaluation).
        for adapters in (graph.student_adapters, graph.teacher_adapters, graph.loss_modules):
            for module in reversed(list(adapters.modules())):
                if module is not adapters and any(True for _ in module.parameters(recurse=False)):
                    fully_shard(module, mesh=mesh)
        fully_shard(graph.student, mesh=mesh)
        fully_shard(graph, mesh=mesh)
        return graph

    def shard_teachers(self, graph: nn.Module, modes: dict[str, str]) -> list[str]:
        """FSDP2 for every frozen teacher whose ``teacher.shard`` is ``fsdp`` (forward only); returns their names.

        Each module the teacher's forward calls and that holds parameters is its own unit (on the fx path: the
        graph's ``call_module`` targets; on the hooks path: the modules its layer map saw run), innermost first,
        and the teacher's root module holds the rest (parameters read with ``get_attr``, a class token). A unit's
        parameters are gathered for its forward and resharded after it, so a process holds 1/W of the teacher plus
        the largest unit. Every rank builds the same teacher from the spec (weights, or the same seed), so the
        slices fit together without a broadcast of the whole teacher. Nothing is sharded in one process."""
        names = [name for name, mode in modes.items() if mode == "fsdp" and name in graph.teachers]
        if not self._several or not names:
            return []
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self._device.type, (self.world,))
        for name in names:
            frozen = graph.teachers[name]
            root = frozen.module
            for unit in _teacher_units(root):
                fully_shard(unit, mesh=mesh, reshard_after_forward=True)
            fully_shard(root, mesh=mesh, reshard_after_forward=True)
            frozen.sharded = True
            if frozen.input is not None:
                frozen.input.to(self._device)
        return names

    # -- collectives -----------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self._several:
            torch.distributed.barrier(**({"device_ids": [self.local_rank]} if self.backend == "nccl" else {}))

    def all_finite(self, *values: torch.Tensor) -> bool:
        """True when every value is finite on every rank (so all ranks skip a bad step together)."""
        ok = all(bool(torch.isfinite(v.full_tensor() if _is_dtensor(v) else v).all()) for v in values)
        if not self._several:
            return ok
        flag = torch.tensor([0 if ok else 1], device=self._device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) == 0

    def stop_agreed(self, loop: Any) -> bool:
        """Whether any rank received a stop signal; all ranks then stop at the same step (``loop.stop_signal``)."""
        if not self._several:
            return loop.stop_signal is not None
        flag = torch.tensor([loop.stop_signal or 0], device=self._device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag.item()) and loop.stop_signal is None:
            loop.stop_signal = int(flag.item())
        return bool(flag.item())

    def reduce_sums(self, sums: dict[str, torch.Tensor], seen: int) -> tuple[dict[str, torch.Tensor], int]:
        """Per-rank metric sums and image counts added over ranks (keys may differ: a rank that resumed holds more)."""
        if not self._several:
            return sums, seen
        every: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(every, sorted(sums))
        keys = sorted(set().union(*every))
        zero = torch.zeros((), dtype=torch.float64, device=self._device)
        flat = torch.stack([*(sums[k].to(self._device, torch.float64) if k in sums else zero for k in keys),
                            torch.tensor(float(seen), dtype=torch.float64, device=self._device)])
        torch.distributed.all_reduce(flat)
        return {k: flat[i] for i, k in enumerate(keys)}, int(round(float(flat[-1])))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (an epoch's metrics row: one truth for best/summary)."""
        if not self._several:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # -- evaluation ------------------------------------------------------------------------------------------------
    def eval_module(self, student: nn.Module, graph: nn.Module) -> nn.Module:
        """The module to evaluate the student with: itself, or (FSDP: its parameters are shards) its extractor.

        Rank 0's buffers (BatchNorm running statistics, which each rank updates from its own shard) are copied to
        every rank first, so all ranks evaluate the model that rank 0 checkpoints."""
        if self._several:
            with torch.no_grad():
                for buffer in graph.buffers():
                    torch.distributed.broadcast(buffer, src=0)
        return _Logits(graph.student) if self.mode == "fsdp" else student

    def eval_positions(self, n: int) -> tuple[torch.Tensor, Optional[int]]:
        """The data-set positions of this rank's :meth:`eval_shard` of ``n`` samples, and how many count (None: all
        of them)."""
        if not self._several:
            return torch.arange(n), None
        per = -(-n // self.world)
        start = min(self.rank * per, n)
        stop = min(start + per, n)
        idx = torch.arange(start, stop)
        if len(idx) < per:
            idx = torch.cat([idx, torch.full((per - len(idx),), max(stop - 1, 0), dtype=torch.long)])
        return idx, stop - start

    def eval_shard(self, dataset: Dataset) -> tuple[Dataset, Optional[int]]:
        """This rank's contiguous share of ``dataset``, padded to the same length on every rank (FSDP needs the
        same number of forwards everywhere), and how many of its samples count (None: all of them)."""
        if not self._several:
            return dataset, None
        idx, valid = self.eval_positions(len(dataset))
        return select(dataset, idx), valid

    def gather_shards(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's ``eval_shard`` rows of a per-sample tensor joined in data set order (collective): the first
        ``n`` rows, so the padding of the last shards falls away. ``part`` itself in a single process."""
        if not self._several:
            return part
        local = part.to(self._device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local)
        return torch.cat(parts)[:n].to(part.device)

    def sum_counts(self, correct: dict[str, int], total: int) -> tuple[dict[str, int], int]:
        """Correct-prediction counts and sample counts added over ranks."""
        if not self._several:
            return correct, total
        keys = sorted(correct)
        flat = torch.tensor([*(correct[k] for k in keys), total], dtype=torch.int64, device=self._device)
        torch.distributed.all_reduce(flat)
        values = flat.tolist()
        return dict(zip(keys, values[:-1])), values[-1]

    # -- state -----------------------------------------------------------------------------------------------------
    def full_state(self, modules: dict[str, nn.Module], optimizer: Optional[torch.optim.Optimizer]
                   ) -> tuple[dict[str, Any], Any]:
        """Modules and optimizer as full state dicts for a checkpoint (FSDP: gathered, collective; rank 0 holds the
        tensors). Unchanged without FSDP: every rank holds the full state already."""
        if self.mode != "fsdp":
            return modules, optimizer
        gathered = {name: _Gathered(self._full_module(module)) for name, module in modules.items()}
        if optimizer is None:
            return gathered, None
        state = optimizer.state_dict()
        full = {idx: {k: _full(v) for k, v in state["state"][idx].items()} for idx in sorted(state["state"])}
        return gathered, _Gathered({"state": full if self.is_main else {}, "param_groups": state["param_groups"]})

    def loadable(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer
                 ) -> tuple[dict[str, Any], Any]:
        """Modules and optimizer that accept a full checkpoint (FSDP: each rank keeps its shard of it)."""
        if self.mode != "fsdp":
            return modules, optimizer
        return {name: _ShardedModule(m) for name, m in modules.items()}, _ShardedOptimizer(optimizer)

    def _full_module(self, module: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_module(self, path: str | Path, module: nn.Module, metadata: Optional[dict[str, str]] = None) -> None:
        """``save_tensors(path, module.state_dict())`` on rank 0, with FSDP shards gathered first (collective)."""
        state = self._full_module(module) if self.mode == "fsdp" else module.state_dict()
        if self.is_main:
            save_tensors(path, state, metadata)

    def finish(self, student: nn.Module) -> None:
        """End of a run: FSDP shards of the returned student made whole again; the process group closed if ours."""
        if self.mode == "fsdp":
            for module in student.modules():
                for name, param in list(module.named_parameters(recurse=False)):
                    if _is_dtensor(param):
                        module.register_parameter(name, nn.Parameter(param.full_tensor().detach(),
                                                                     requires_grad=param.requires_grad))
        if self.owner:
            # every rank done with the group before any closes it, and wrappers left in reference cycles (DDP's
            # reducer holds the group) freed now rather than at interpreter exit, where gloo's threads can abort
            torch.distributed.barrier()
            gc.collect()
            destroy()


LOCAL = DistContext()


def _teacher_units(root: nn.Module) -> list[nn.Module]:
    """The modules of a frozen teacher that its forward calls and that hold parameters, innermost first."""
    from torch import fx

    if isinstance(root, fx.GraphModule):
        called = {node.target for node in root.graph.nodes if node.op == "call_module"}
    else:  # the hooks path: a FeatureExtractor; its layer map lists every module that ran
        prefix = "model."
        called = {prefix + info.name for info in root.layer_map.layers if ":" not in info.name}
    modules = dict(root.named_modules())
    units = [modules[name] for name in called if name in modules and any(True for _ in modules[name].parameters())]
    depth = {id(m): name.count(".") for name, m in modules.items()}
    return sorted(units, key=lambda m: -depth[id(m)])


def destroy() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
