"""Weights: safetensors in, safetensors out. Pickle is never used; ``.pt/.pth`` only with ``weights_only=True``."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kdgraph.errors import WeightsError

__all__ = ["load_weights", "read_state_dict", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).parent / "weights"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` (or ``.pt/.pth`` with ``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"weights path {str(path)!r} is a folder, not a file (.safetensors, or .pt/.pth/.bin)")
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means the file cannot be trusted as plain tensors
            raise WeightsError(
                f"cannot read {str(path)!r} as plain tensors (weights_only=True): {_first_reason(err)}. kdgraph "
                "never unpickles other objects; if you trust the file, load it yourself and save its state dict "
                "with safetensors") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
            raise WeightsError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
        return state
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{str(path)!r} is not a readable safetensors file ({err}); is it truncated or corrupted?") from None


def _first_reason(err: Exception) -> str:
    """torch's weights_only errors are long (and suggest weights_only=False): keep the unpickler's reason."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or [type(err).__name__])[0]
    return reason.strip().rstrip(".")


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` fails to fit ``model`` strictly (missing / unexpected / reshaped keys, with examples), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
             f"{len(bad_shape)} with other shapes (e.g. {'; '.join(bad_shape[:2])})" if bad_shape else ""]
    parts = [p for p in parts if p]
    return f"{', '.join(parts)} keys" if parts else None


def load_weights(model: nn.Module, path: str | Path, model_name: str = "model") -> None:
    """Load weights strictly; a file for another architecture is reported with example missing/unexpected keys."""
    state = read_state_dict(path)
    problem = state_mismatch(model, state)
    if problem:
        raise WeightsError(f"{str(path)!r} does not fit {model_name}: {problem}. Are these weights for another "
                           "architecture or other model kwargs?")
    model.load_state_dict(state, strict=True)
