"""Forward-hook strategy: the fallback for models torch.fx cannot trace.

Differs from the fx strategy in three ways, all because hooks only see modules:

- only submodule paths (``model.named_modules()``, root excluded) are names;
  no function nodes such as ``add_3``;
- a module called more than once is described, and captured, at its FIRST
  call, matching fx, where the first call is ``relu`` and the second ``relu_1``;
- extraction runs the whole model with hooks attached for the duration of one
  forward (not compile-friendly); with ``keep_output=False`` the forward is cut
  short once every tap has been captured.

``NAME:input`` is the first tensor among a module's positional then keyword
arguments, captured by a forward pre-hook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdgraph.trace.layer_map import LayerInfo, LayerMap, describe, first_tensor, split_name
from kdgraph.trace.probe import probe

__all__ = ["hooks_layer_map", "HookTaps"]


def hooks_layer_map(model: nn.Module, input_shape: tuple[int, ...], model_name: str = "model") -> LayerMap:
    """Describe every submodule that runs, in order of completion, with one probe forward (see
    ``kdgraph.trace.probe``: meta tensors first, a real batch when they fail)."""
    outputs, inputs, output = probe(model, input_shape, lambda x: _describe_modules(model, x, input_shape))
    # Dicts keep insertion order: outputs are in order of completion.
    layers = list(outputs.values())
    return LayerMap(
        model_name,
        "hooks",
        input_shape,
        layers,
        {k: v for k, v in inputs.items() if k in outputs},
        output=LayerInfo("output", type(model).__name__, *output),
    )


def _describe_modules(
    model: nn.Module, x: torch.Tensor, input_shape: tuple[int, ...]
) -> tuple[dict[str, LayerInfo], dict[str, LayerInfo], tuple]:
    """One forward with a hook on every submodule: ``(outputs, inputs, description of the model output)``."""
    outputs: dict[str, LayerInfo] = {}
    inputs: dict[str, LayerInfo] = {}
    handles = []

    def pre_hook(name: str, kind: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name in inputs:
                return
            value = first_tensor(args, kwargs)
            if value is not None:
                inputs[name] = LayerInfo(f"{name}:input", kind, *describe(value, input_shape))

        return hook

    def post_hook(name: str, kind: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in outputs:
                outputs[name] = LayerInfo(name, kind, *describe(output, input_shape))

        return hook

    for name, module in model.named_modules():
        if not name:
            continue
        kind = type(module).__name__
        handles.append(module.register_forward_pre_hook(pre_hook(name, kind), with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook(name, kind)))
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, inputs, describe(output, input_shape)


class _StopForward(Exception):
    """Raised from a hook to end a forward once every tap is captured."""


class HookTaps:
    """Captures tapped module outputs (or inputs) during one forward of a model."""

    def __init__(self, model: nn.Module, taps: list[str]):
        self.taps = list(dict.fromkeys(taps))
        self.plan: list[tuple[str, str, str]] = []  # (tap, module path, "input" | "output")
        for tap in self.taps:
            base, suffix = split_name(tap)
            if not base:
                raise ValueError(f"tap {tap!r}: name a submodule (the whole model's output is 'output')")
            try:
                model.get_submodule(base)
            except AttributeError:
                raise ValueError(f"tap {tap!r}: {base!r} is not a submodule of {type(model).__name__}") from None
            self.plan.append((tap, base, suffix))

    def run(self, model: nn.Module, x: Any, keep_output: bool = True) -> dict[str, Any]:
        captured: dict[str, Any] = {}
        wanted = len(self.plan)

        def store(tap: str, value: Any) -> None:
            if tap in captured:
                return  # first call wins, as in the layer map
            # a copy: a later in-place op (ReLU(inplace=True) after a tapped BatchNorm) must not change the tap
            captured[tap] = value.clone() if isinstance(value, torch.Tensor) else value
            if not keep_output and len(captured) == wanted:
                raise _StopForward

        def make_pre(tap: str):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                store(tap, first_tensor(args, kwargs))

            return hook

        def make_post(tap: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                store(tap, output)

            return hook

        handles = []
        try:
            for tap, base, suffix in self.plan:
                module = model.get_submodule(base)
                if suffix == "input":
                    handles.append(module.register_forward_pre_hook(make_pre(tap), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(make_post(tap)))
            output = None
            try:
                output = model(x)
            except _StopForward:
                pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [tap for tap in self.taps if tap not in captured]
        if missing:
            raise RuntimeError(f"layers {missing} did not run during this forward of {type(model).__name__}")
        result = {tap: captured[tap] for tap in self.taps}
        if keep_output:
            result["output"] = output
        return result
