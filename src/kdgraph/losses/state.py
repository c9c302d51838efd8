"""Loss state that survives an interruption: a random stream whose position is part of the state dict.

A loss that draws random numbers every step (MGD's masks, CRD's negatives) draws them from its own
:class:`RandomStream`, a module beside its other parts. Its generator's state is saved with the module's tensors
(``state``, a uint8 tensor), so a checkpoint restores the exact position of the stream and a resumed run draws the
same numbers as an uninterrupted one. The global RNG is left alone: the loader, the augmentations and the model
initialisation keep their own streams.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["RandomStream"]


class RandomStream(nn.Module):
    """A ``torch.Generator`` seeded with ``seed``, living on the module's device, its state in the state dict.

    ``generator()`` returns it (created on first use, and again, from the seed, when the module moved to another
    device: a CPU and a CUDA generator have different states). The state dict holds one tensor, ``state``; loading
    it sets the generator's state, so the next draw continues the saved stream.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        self.register_buffer("anchor", torch.empty(0), persistent=False)  # follows .to(device)
        self._generator: torch.Generator | None = None

    def generator(self) -> torch.Generator:
        device = self.anchor.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device).manual_seed(self.seed)
        return self._generator

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "state"] = self.generator().get_state()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        key = prefix + "state"
        if key not in state_dict:
            missing_keys.append(key)
            return
        state = state_dict[key].detach().to("cpu", torch.uint8)
        try:
            self.generator().set_state(state)
        except RuntimeError as err:  # a CUDA run's stream resumed on the CPU, or the reverse
            error_msgs.append(f"{key}: a {self.anchor.device.type} random stream cannot continue from this saved "
                              f"state ({err}); resume on the device the run started on")

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
