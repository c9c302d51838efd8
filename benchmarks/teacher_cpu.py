"""What is left to win on the frozen teacher's CPU forward: the quickstart teacher, four ways, interleaved.

Issue #3 asks for a CPU KD step at most 0.85x a hand-written one, with teacher outputs within 1e-5 of the unfolded
teacher's. The teacher's forward is ~70% of the step, so this times only that forward (batch 128, channels_last,
inference mode) as

- ``plain``:     the teacher as people write it (eval mode, BatchNorm unfolded);
- ``kdgraph``:   kdgraph's ``FrozenTeacher`` (fx graph, BatchNorm folded into the convolutions);
- ``onednn``:    the folded graph with every conv -> ReLU and conv -> add -> ReLU fused into one oneDNN call
                 (``mkldnn._convolution_pointwise``, the kernels Inductor's CPU path emits) on prepacked weights;
- ``bf16``:      the folded graph under CPU bf16 autocast (not exact: shown for its error).

It prints the median forward time of each, the ratio to ``plain``, the achieved GFLOP/s of the convolutions and
the largest output difference from ``plain``. Run: ``python3 benchmarks/teacher_cpu.py [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import operator
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.plan import resolve_plan  # noqa: E402

MK = torch.ops.mkldnn


class FusedConv(nn.Module):
    """One oneDNN convolution with its ReLU (and residual add) fused, on weights prepacked for the input size."""

    def __init__(self, conv: nn.Conv2d, unary: str, residual: bool, input_size: list[int]):
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = MK._reorder_convolution_weight(conv.weight.detach(), *self.geometry, input_size)
        self.register_buffer("weight", weight, persistent=False)
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.unary, self.residual = unary, residual

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if other is None:
            return MK._convolution_pointwise(x, self.weight, self.bias, *self.geometry, self.unary, [], "")
        return MK._convolution_pointwise.binary(x, other, self.weight, self.bias, *self.geometry, "add", None,
                                                self.unary, [], "")


def _is(node: fx.Node, modules: dict, kind: type) -> bool:
    return node.op == "call_module" and isinstance(modules.get(node.target), kind)


def fuse_onednn(gm: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """A copy of ``gm`` with conv [-> add] -> ReLU chains replaced by fused oneDNN calls."""
    gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    ShapeProp(gm).propagate(example)
    convs = [n for n in gm.graph.nodes if _is(n, modules, nn.Conv2d)]
    sizes = {n: list(n.args[0].meta["tensor_meta"].shape) for n in convs}
    for i, node in enumerate(convs):
        unary, other, chain = "none", None, [node]
        user = next(iter(node.users)) if len(node.users) == 1 else None
        if user is not None and _is(user, modules, nn.ReLU):
            unary, chain = "relu", [node, user]
        elif user is not None and user.op == "call_function" and user.target is operator.add and len(user.users) == 1:
            after = next(iter(user.users))
            if _is(after, modules, nn.ReLU):
                other = user.args[1] if user.args[0] is node else user.args[0]
                unary, chain = "relu", [node, user, after]
        name = f"onednn_{i}"
        gm.add_submodule(name, FusedConv(modules[node.target], unary, other is not None, sizes[node]))
        args = (node.args[0],) if other is None else (node.args[0], other)
        with gm.graph.inserting_after(chain[-1]):
            fused = gm.graph.call_module(name, args)
        chain[-1].replace_all_uses_with(fused)
        for dead in reversed(chain):
            gm.graph.erase_node(dead)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def conv_flops(gm: fx.GraphModule, example: torch.Tensor) -> float:
    """Multiply-adds x 2 of every convolution in ``gm`` for ``example``."""
    modules = dict(gm.named_modules())
    ShapeProp(gm).propagate(example)
    total = 0.0
    for node in gm.graph.nodes:
        if _is(node, modules, nn.Conv2d):
            conv, out = modules[node.target], node.meta["tensor_meta"].shape
            total += 2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds (one call of each variant per round)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    plan = resolve_plan(load_spec(root / "specs" / "quickstart.yaml", [f"data.batch_size={args.batch_size}"]))
    cl = torch.channels_last
    x = torch.randn(args.batch_size, *plan.data.input_shape).contiguous(memory_format=cl)
    plain = copy.deepcopy(plan.teacher).eval().to(memory_format=cl)
    folded = plan.graph.teacher.module.to(memory_format=cl)
    fused = fuse_onednn(folded, x)

    def bf16(inp: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return {k: v.float() for k, v in folded(inp).items()}

    variants = {"plain": lambda inp: {"output": plain(inp)}, "kdgraph": folded, "onednn": fused, "bf16": bf16}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        reference = plain(x)
        errors = {name: float((fn(x)["output"] - reference).abs().max()) for name, fn in variants.items()}
        for r in range(3 + args.rounds):
            order = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
            for name in order:
                start = time.perf_counter()
                variants[name](x)
                if r >= 3:
                    times[name].append(time.perf_counter() - start)
    flops = conv_flops(folded, x)
    base = statistics.median(times["plain"])
    print(f"teacher {plan.spec.teacher.model}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
          f"{flops / 1e9:.2f} GFLOP of convolutions per forward, {args.rounds} interleaved rounds")
    print(f"{'variant':<8} {'median ms':>10} {'vs plain':>9} {'conv GFLOP/s':>13} {'max |logit diff|':>17}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<8} {t * 1e3:>10.2f} {t / base:>9.3f} {flops / t / 1e9:>13.1f} {errors[name]:>17.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
