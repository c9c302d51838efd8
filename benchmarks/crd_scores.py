"""CRD's scores two equal ways on one CPU core: the published gather of K + 1 bank rows per example against one
product with the whole bank (what kdgraph's CRDMemory does while N <= 8 (K + 1)); forward + backward per side.

    python3 benchmarks/crd_scores.py --num-data 60000 --negatives 16384 --batch 128

Plain PyTorch, imports nothing from kdgraph: the ratio is of two hand-written ways in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=60000)
    parser.add_argument("--negatives", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(args.num_data, args.dim), dim=1)
    anchor = torch.randn(args.batch, args.dim, requires_grad=True)
    index = torch.randint(args.num_data, (args.batch, args.negatives + 1))

    def gather() -> torch.Tensor:
        return torch.bmm(bank[index], anchor[:, :, None]).squeeze(2)

    def product() -> torch.Tensor:
        return (bank.clone() @ anchor.t()).t().gather(1, index)

    assert torch.allclose(gather(), product(), atol=1e-5)
    seconds = {}
    for name, scores in (("gather", gather), ("product", product)):
        torch.exp(scores() / 0.07).sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            torch.exp(scores() / 0.07).sum().backward()
        seconds[name] = (time.perf_counter() - start) / args.repeats
        print(f"{name:8s} {1000 * seconds[name]:8.1f} ms per side and step")
    print(f"ratio gather / product: {seconds['gather'] / seconds['product']:.1f}x")


if __name__ == "__main__":
    main()
