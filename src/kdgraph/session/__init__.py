"""The process a command runs in: what ``train`` and ``teach`` both set up before they resolve a plan, and what they
share while they run.

Modules: ``session`` (:class:`Session`: the process group, the reporter and the seed, in that order, and ``finish``),
``launch`` (torchrun's environment checked against ``runtime.distributed``, the process group joined, ``--nproc``),
``distributed`` (``DistContext``: DDP/FSDP2 wrapping, all-reduces and gathers, rank-0 writes; the identity in one
process), ``progress`` (``Reporter``: lines, bars, the run clock), ``signals`` (SIGINT/SIGTERM: finish the step,
checkpoint, stop; ``Interrupted``). ``Session`` is imported lazily, so that ``kdgraph.session.signals`` stays light
for the CLI's error handler.
"""

from typing import Any

__all__ = ["Session"]


def __getattr__(name: str) -> Any:
    if name == "Session":
        from kdgraph.session.session import Session

        return Session
    raise AttributeError(f"module 'kdgraph.session' has no attribute {name!r}")
