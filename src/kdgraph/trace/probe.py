"""The probe forward that describes a model's layers, run on the meta device first.

A layer map needs shapes, not values. On the meta device every op runs only
its shape function: a timm ResNet-50 at 224 px is described in ~0.05 s instead
of ~1-3 s of convolutions. The model is not moved or copied: for the length of
the probe, ``torch.func.functional_call`` stands a meta twin in for each of its
parameters and buffers, and puts the originals back afterwards.

Meta tensors cannot run everything a real forward can: an op without a meta
kernel (a custom C++ op), a tensor the forward makes on the CPU itself
(``torch.arange(n)`` without ``device=``), a shape that depends on values
(``nonzero``), Python control flow on a value (``if x.sum() > 0``, ``.item()``).
Then the same probe runs once more on a real batch, and an error from that run
is the one the user sees: the message a wrong input shape gives is exactly what
it was before meta tensors were tried.

Why not ``FakeTensorMode``: it runs the same meta kernels but wraps every op in
Python, and some (BatchNorm) as Python decompositions; the probe of a
ResNet-50 took ~0.2-0.7 s with fake tensors, ~0.05 s on meta.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.func import functional_call

from kdgraph.trace.layer_map import preserved_modes, probe_input

__all__ = ["probe"]

T = TypeVar("T")


class _Call(nn.Module):
    """``forward(x) = fn(x)``, with ``module`` registered so that ``functional_call`` swaps its tensors."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], T]):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: torch.Tensor) -> T:
        return self.fn(x)


def _on_meta(module: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], T]) -> T:
    call = _Call(module, forward)
    named = itertools.chain(
        call.named_parameters(remove_duplicate=False), call.named_buffers(remove_duplicate=False)
    )
    twin_of: dict[int, torch.Tensor] = {}  # one twin per tensor: tied weights stay tied, as functional_call checks
    twins = {name: twin_of.setdefault(id(t), torch.empty_like(t, device="meta")) for name, t in named}
    return functional_call(call, twins, (x.to("meta"),), tie_weights=True, strict=True)


def probe(module: nn.Module, input_shape: tuple[int, ...], forward: Callable[[torch.Tensor], T]) -> T:
    """``forward(x)`` on the probe batch, in eval mode without gradients: meta tensors first, a real batch when
    they fail.

    ``module`` holds every parameter and buffer ``forward`` uses (the model, or its fx ``GraphModule``).
    ``forward`` may run twice, so it must start from scratch on each call and return plain descriptions (no
    tensors: meta ones hold no values). Every module's own ``training`` flag is restored.
    """
    x = probe_input(module, input_shape)
    with preserved_modes(module), torch.no_grad():
        module.eval()
        try:
            return _on_meta(module, x, forward)
        except Exception:  # noqa: BLE001 - whatever meta tensors cannot run, a real forward may; its error is shown
            pass
        return forward(x)
