"""Channel pruning of teacher features (InDistill, Sarridis et al.).

InDistill prunes the teacher's filters to the student's width and distils the
pruned teacher's feature into the student without a projector. Rather than
building a pruned copy of the teacher, kdgraph selects channels of the
teacher's feature: BatchNorm, ReLU and pooling act per channel, so for a
``conv -> BN -> ReLU (-> pool)`` stack

    select(relu(bn(conv(x))), idx) == relu(bn[idx](conv[idx](x)))

where ``conv[idx]`` keeps only the filters ``idx`` and ``bn[idx]`` only their
statistics. Teacher weights are never modified.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["l1_channel_mask", "ChannelSelect", "find_producing_conv", "RESIDUAL_BRANCH_NAMES"]

# Children with these names hold a residual block's shortcut projection
# (torchvision ResNet: ``downsample``; many CIFAR ResNets and timm: ``shortcut``).
# They are registered after the main path's convs, but the block's output
# channels follow the main path, so find_producing_conv skips them.
RESIDUAL_BRANCH_NAMES = ("downsample", "shortcut")


def l1_channel_mask(conv_weight: torch.Tensor, keep: int, criterion: str = "l1") -> torch.Tensor:
    """Indices of the ``keep`` output filters with the largest L1 (or L2) norm.

    ``conv_weight`` has the output filters in dim 0 (``(O, I, kh, kw)`` for a
    conv, ``(O, I)`` for a linear layer). Norms are computed in float64 on a
    detached copy. Ties go to the lower index. The result is a LongTensor
    sorted ascending, on the weight's device.
    """
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion {criterion!r} is not 'l1' or 'l2'")
    if conv_weight.dim() < 2:
        raise ValueError(f"expected a weight with output filters in dim 0 and at least 2 dims, got shape {tuple(conv_weight.shape)}")
    n_out = conv_weight.shape[0]
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n_out:
        raise ValueError(f"keep must be an int in 1..{n_out} (the number of filters), got {keep!r}")
    with torch.no_grad():
        w = conv_weight.detach().reshape(n_out, -1).to(torch.float64)
        norms = w.abs().sum(dim=1) if criterion == "l1" else w.pow(2).sum(dim=1).sqrt()
        # stable descending sort keeps the lower index first among equal norms
        order = torch.sort(norms, descending=True, stable=True).indices
        kept = order[:keep]
        return torch.sort(kept).values.to(torch.long)


class ChannelSelect(nn.Module):
    """Keep the channels ``indices`` of a feature: ``(B, C, H, W) -> (B, k, H, W)``.

    ``dim`` is the channel dim: 1 for maps and vectors, -1 for tokens. The
    indices are a buffer (moved with ``.to()`` and saved), there are no
    parameters.
    """

    indices: torch.Tensor

    def __init__(self, indices: torch.Tensor, dim: int = 1) -> None:
        super().__init__()
        idx = torch.as_tensor(indices).detach().to(torch.long).flatten().clone()
        self.register_buffer("indices", idx)
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(self.dim, self.indices)

    def extra_repr(self) -> str:
        return f"keep={self.indices.numel()}, dim={self.dim}"


def find_producing_conv(model: nn.Module, module_path: str) -> tuple[str, nn.Conv2d]:
    """The Conv2d whose filters decide the channels of the feature tapped at ``module_path``.

    Rule: if the module at ``module_path`` is a Conv2d, it is the answer;
    otherwise the last Conv2d registered inside it (``named_modules`` order),
    skipping those under a child named ``downsample`` or ``shortcut`` (a
    residual block's shortcut projection) unless no other Conv2d exists.
    A trailing ``:output`` is accepted; ``:input`` is refused (the producing
    conv then lies outside the module). Returns ``(full module path, conv)``.
    Registration order is declaration order in ``__init__``, which for the
    usual conv -> BN -> act blocks is the order they run in; check the
    returned conv's ``out_channels`` against the feature when in doubt.
    """
    path = module_path
    if path.endswith(":output"):
        path = path[: -len(":output")]
    elif path.endswith(":input"):
        raise ValueError(
            f"{module_path!r} taps a module's input; the conv producing it is outside that module. "
            "Name the preceding layer's output instead"
        )
    try:
        root = model.get_submodule(path) if path else model
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if n.startswith(path.split(".")[0])][:8]
        raise ValueError(
            f"no module {path!r} in {type(model).__name__}"
            + (f"; modules starting alike: {', '.join(close)}" if close else "")
        ) from None
    if isinstance(root, nn.Conv2d):
        return path, root
    main: list[tuple[str, nn.Conv2d]] = []
    side: list[tuple[str, nn.Conv2d]] = []
    for name, mod in root.named_modules():
        if isinstance(mod, nn.Conv2d):
            full = f"{path}.{name}" if path else name
            parts = name.split(".")
            (side if any(p in RESIDUAL_BRANCH_NAMES for p in parts) else main).append((full, mod))
    found = main or side
    if not found:
        raise ValueError(
            f"module {path!r} ({type(root).__name__}) holds no Conv2d, so no filters to prune; "
            "tap a convolutional layer or block, or use a projector instead of prune"
        )
    return found[-1]
