"""One ``Session`` per command that runs models: ``train()`` and ``teach()`` both start with it.

Starting one does, in this order, what both did at their start: join the process group when torchrun started the
process (:func:`~kdgraph.session.launch.start_distributed`, ``LOCAL`` in one process), silence every rank but 0
(:meth:`~kdgraph.session.distributed.DistContext.reporter`), and seed ``random``, numpy and torch from
``runtime.seed``. The seeding comes last and before any model is built: the initial weights depend on it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from kdgraph.runtime import Runtime, seed_everything
from kdgraph.session.distributed import DistContext
from kdgraph.session.launch import start_distributed
from kdgraph.session.progress import Reporter
from kdgraph.session.signals import stop_on_signals
from kdgraph.spec.schema import Spec

__all__ = ["Session"]


@dataclass(frozen=True)
class Session:
    """Where this process stands (``dist``) and where it reports (``reporter``, silent on ranks > 0)."""

    dist: DistContext
    reporter: Reporter

    @classmethod
    def start(cls, spec: Spec, *, quiet: bool = False, reporter: Optional[Reporter] = None) -> Session:
        """The process group joined (or ``LOCAL``), the reporter chosen, the seeds set from ``spec.runtime.seed``."""
        dist = start_distributed(spec)  # LOCAL in one process; under torchrun: rank 0 prints and writes
        reporter = dist.reporter(reporter or Reporter(quiet=quiet))
        seed_everything(spec.runtime.seed)
        return cls(dist=dist, reporter=reporter)

    def runtime(self, rt: Runtime) -> Runtime:
        """The plan's runtime fitted to this process (cuda:LOCAL_RANK; FSDP eager and contiguous)."""
        return self.dist.runtime(rt, self.reporter)

    def stop_on_signals(self, loop: Any) -> AbstractContextManager[None]:
        """SIGINT/SIGTERM set ``loop.stop_signal`` while the block runs (``signals.stop_on_signals``)."""
        return stop_on_signals(loop)

    def finish(self, student: nn.Module) -> None:
        """End of a run: FSDP shards of ``student`` made whole; the process group closed if this session opened it."""
        self.dist.finish(student)
