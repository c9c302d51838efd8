"""kdgraph against an independent plain-PyTorch loop on the same task (issue #21): final top-1 over seeds.

    python3 benchmarks/fidelity.py --seeds 0 1 2 --epochs 6 --out docs/results/fidelity.md

Runs, one after another, each variant of benchmarks/references/fmnist_kd.py (the loop, which imports nothing from
kdgraph) and the same variant as a kdgraph spec (benchmarks/references/fmnist_kd.yaml plus the overrides below),
each in its own process. Every finished run is appended to ``--log`` (JSON lines) and skipped when the command is run
again, so an interrupted sweep continues where it stopped. The table gives mean ± std per side, the difference of
the means and whether it lies within 2 standard deviations. Needs the full Fashion-MNIST (Debian's
dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "benchmarks" / "references"
SPEC = REFERENCES / "fmnist_kd.yaml"
TEACHER = ROOT / "src" / "kdgraph" / "models" / "weights" / "fmnist_resnet.safetensors"

# each variant of the loop, as --set overrides of the spec (which is plain KD)
PAIR_MSE = "distill.pairs=[{teacher: layer3, student: block3, projector: conv1x1, loss: mse}]"
PAIR_PROJECTOR = ("distill.pairs=[{teacher: layer3, student: block3, pool: gap, projector: {name: linear, bias: true}, "
                  "normalize: {name: bn, eps: 1.0e-4}, loss: {name: logsum, alpha: 4}, weight: 2.0}]")
VARIANTS: dict[str, list[str]] = {
    "alone": ["teacher=null", "distill.logits=null", "train.ce_weight=1"],
    "kd": [],
    "fitnet": [PAIR_MSE],
    "projector": ["train.ce_weight=1", "distill.logits={loss: kl, temperature: 1.0, weight: 1.0}", PAIR_PROJECTOR],
}
LABELS = {"alone": "student alone", "kd": "KD: 0.1·CE + 0.9·T²·KL, T = 4",
          "fitnet": "FitNet: KD + MSE(1x1 conv(block3), layer3)",
          "projector": "projector: CE + KL(T = 1) + 2·log Σ|BN(W·GAP) − BN(GAP)|⁴"}


def run_reference(variant: str, seed: int, epochs: int, threads: int) -> float:
    command = [sys.executable, str(REFERENCES / "fmnist_kd.py"), variant, "--seed", str(seed), "--epochs", str(epochs),
               "--threads", str(threads), *(["--teacher", str(TEACHER)] if variant != "alone" else [])]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["top1"]


def run_kdgraph(variant: str, seed: int, epochs: int, threads: int, work: Path) -> float:
    run_dir = work / f"kdgraph-{variant}-s{seed}"
    overrides = [*VARIANTS[variant], f"runtime.seed={seed}", f"train.epochs={epochs}", f"runtime.threads={threads}",
                 f"output={run_dir}"]
    command = [sys.executable, "-m", "kdgraph", "train", str(SPEC), "--quiet", "--overwrite",
               *(arg for o in overrides for arg in ("--set", o))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(REFERENCES)]), HF_HUB_OFFLINE="1")
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads((run_dir / "summary.json").read_text())["student_top1"]


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: list[dict], seeds: list[int], epochs: int) -> str:
    lines = ["| variant | plain PyTorch loop | kdgraph | kdgraph − loop | within 2 std |", "| --- | --- | --- | --- | --- |"]
    for variant in VARIANTS:
        sides = {}
        for side in ("reference", "kdgraph"):
            values = [r["top1"] for r in rows if r["variant"] == variant and r["side"] == side and r["seed"] in seeds
                      and r["epochs"] == epochs]
            sides[side] = values
        if not all(len(v) == len(seeds) for v in sides.values()):
            continue
        (m_r, s_r), (m_k, s_k) = stats(sides["reference"]), stats(sides["kdgraph"])
        bound = 2 * max(s_r, s_k)
        lines.append(f"| {LABELS[variant]} | {100 * m_r:.2f} ± {100 * s_r:.2f} | {100 * m_k:.2f} ± {100 * s_k:.2f} | "
                     f"{100 * (m_k - m_r):+.2f} | {'yes' if abs(m_k - m_r) <= bound else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fidelity")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines of finished runs (default: WORK/runs.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    log = args.log or args.work / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for variant in args.variants:
        for seed in args.seeds:
            for side in ("reference", "kdgraph"):
                if any(r["variant"] == variant and r["seed"] == seed and r["side"] == side and r["epochs"] == args.epochs
                       for r in rows):
                    continue
                top1 = (run_reference(variant, seed, args.epochs, args.threads) if side == "reference" else
                        run_kdgraph(variant, seed, args.epochs, args.threads, args.work))
                row = {"variant": variant, "seed": seed, "side": side, "epochs": args.epochs, "top1": top1}
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    command = " ".join(["python3 benchmarks/fidelity.py", "--seeds", *map(str, args.seeds), "--epochs",
                        str(args.epochs), "--threads", str(args.threads)])
    text = (f"Full Fashion-MNIST, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.epochs} epochs, "
            f"final test top-1 (%), mean ± std.\n\n{table(rows, args.seeds, args.epochs)}\n\nCommand: `{command}`\n")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
