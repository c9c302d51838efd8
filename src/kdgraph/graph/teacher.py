"""The frozen teacher made cheaper: an eval-only fx graph with BatchNorm folded into the preceding convolution.

The teacher never trains, so its BatchNorm layers are fixed affine maps; folding them into the convolution before
them removes a whole pass over every feature map. The fold works on a copy: the user's teacher module is never
changed in memory or on disk. Models on the hooks path (fx could not trace them) are used as they are.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from kdgraph.trace import FeatureExtractor

__all__ = ["FrozenTeacher", "fold_batchnorm"]


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``fuse_conv_bn_eval(conv, bn)``, the same numbers, without first copying the weight it then replaces."""
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
    fused = copy.deepcopy(conv, {id(conv.weight): weight})
    fused.bias = bias
    return fused


def fold_batchnorm(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` used once; returns (copy, count).

    The copy is made last: the folded convolutions are new modules, the BatchNorms are gone, and only what is
    left of ``gm`` is deep-copied, so a ResNet's weights are written once instead of three times (a copy of the
    model, a copy of each convolution, the fold).
    """
    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # its own graph and containers; leaf modules still gm's
    modules = dict(gm.named_modules())
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    fused: list[nn.Module] = []
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or uses[node.target] != 1:
            continue
        prev = node.args[0]
        conv = modules.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        # the conv's raw output must feed only this BN (a tap on it would otherwise change meaning)
        if not isinstance(conv, nn.Conv2d) or len(prev.users) != 1 or uses[prev.target] != 1:
            continue
        fused.append(_fused_conv(conv, bn))
        _set_module(gm, prev.target, fused[-1])
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    # What is left is still the user's (a Linear head, unfolded layers): copy it, but not the new convolutions.
    ours = {id(t): t for module in fused for t in (*module.parameters(), *module.buffers())}
    gm = copy.deepcopy(gm, ours)
    gm.requires_grad_(False)
    return gm.eval(), len(fused)


class FrozenTeacher(nn.Module):
    """The teacher's feature extractor for inference only: eval mode, no gradients, BatchNorm folded (fx path).

    ``input`` (an ``InputAdapter``) converts the data's batch to what the teacher was trained for before it runs.
    ``dtype`` (``teacher.precision``: bf16/fp16) keeps the weights in that type: the fold is computed in float32
    first, the forward runs in ``dtype`` outside any autocast, and every output is returned in the batch's type, so
    the losses and the teacher cache see float32 as before. On the hooks path a ``dtype`` is applied to a copy when
    ``own`` is False (a module passed from Python is never changed)."""

    def __init__(self, extractor: FeatureExtractor, fold: bool = True, input: Optional[nn.Module] = None,
                 dtype: Optional[torch.dtype] = None, own: bool = False):
        super().__init__()
        self.folded = 0
        self.sharded = False  # teacher.shard: fsdp (set by DistContext.shard_teachers)
        self.taps = extractor.taps
        self.keep_output = extractor.keep_output
        self.output_shapes = extractor.output_shapes  # what forward returns, without the batch dim
        if extractor.method == "fx" and fold:
            source = extractor.graph_module
            eval_graph = getattr(source, "eval_graph", source.graph)
            gm = fx.GraphModule(source, copy.deepcopy(eval_graph))
            self.module, self.folded = fold_batchnorm(gm)
        else:
            self.module = extractor if own or dtype is None or extractor.method == "fx" else copy.deepcopy(extractor)
        self.input = input if input is not None and not getattr(input, "identity", False) else None
        self.dtype = dtype if dtype not in (None, torch.float32) else None
        if self.dtype is not None:
            self.module.to(self.dtype)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if self.input is not None:
                x = self.input(x)
            if self.dtype is None:
                return self.module(x)
            with torch.autocast(x.device.type, enabled=False):
                out = self.module(x.to(self.dtype))
            return {k: v.to(x.dtype) if torch.is_floating_point(v) else v for k, v in out.items()}
