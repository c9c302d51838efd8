"""Accuracy of method recipes on Fashion-MNIST over several seeds: mean ± std top-1, as a markdown table.

    python3 benchmarks/accuracy.py self_distillation --seeds 0 1 2 --epochs 3 --out docs/results/self_distillation.md

Each recipe is compared with the same student trained alone for the same budget (and plain KD where a teacher
exists). Uses the full Fashion-MNIST when Debian's dataset-fashion-mnist is installed (or data.root), else the
embedded subset; the table says which.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.train import train  # noqa: E402

RECIPES = {
    "self_distillation": [
        ("student alone", "specs/methods/self_distillation.yaml", ["teacher=null", "self_distill=null"]),
        ("self-distillation", "specs/methods/self_distillation.yaml", []),
    ],
    "indistill": [
        ("student alone", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]"]),
        ("plain KD (logits, T=4)", "specs/quickstart.yaml", ["distill.pairs=[]"]),
        ("InDistill (pruned taps, curriculum, PKT)", "specs/methods/indistill.yaml", []),
    ],
    "projector": [
        ("student alone", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]"]),
        ("plain KD (logits, T=4)", "specs/quickstart.yaml", ["distill.pairs=[]"]),
        ("projector recipe (linear + BN + logsum, KL T=1)", "specs/methods/projector.yaml", []),
    ],
    "simreg": [
        ("student alone (CE)", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]",
                                                          "eval=[top1,knn,linear_probe]"]),
        ("SimReg, 2 teachers, no labels", "specs/methods/simreg_two_teachers.yaml", []),
        ("student alone (CE), SimReg's augmentation", "specs/quickstart.yaml",
         ["teacher=null", "distill.logits=null", "distill.pairs=[]", "eval=[top1,knn,linear_probe]",
          "data.augment=resized-crop-flip", "data.crop_scale=[0.5,1.0]"]),
        ("SimReg, 2 teachers, + CE", "specs/methods/simreg_two_teachers.yaml",
         ["train.ce_weight=1", "eval=[top1,knn,linear_probe]"]),
    ],
    "function_matching": [
        ("student alone", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]"]),
        ("plain KD (logits, T=4)", "specs/quickstart.yaml", ["distill.pairs=[]"]),
        ("function matching (shared views, mixup, KL only, AdamW)", "specs/methods/function_matching.yaml", []),
        ("function matching, independent views", "specs/methods/function_matching.yaml", ["data.views=independent"]),
        ("student alone (CE), function matching's augmentation and mixup", "specs/quickstart.yaml",
         ["teacher=null", "distill.logits=null", "distill.pairs=[]", "data.augment=resized-crop-flip",
          "data.crop_scale=[0.5,1.0]", "data.mix=mixup"]),
    ],
    "quickstart": [
        ("student alone", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]"]),
        ("KD (logits + layer3 pair)", "specs/quickstart.yaml", []),
    ],
}


def run(label: str, path: str, overrides: list[str], seeds: list[int], epochs: int,
        extra: list[str] = ()) -> tuple[list[dict], str]:
    rows, description = [], ""
    for seed in seeds:
        spec = load_spec(ROOT / path, [*overrides, f"runtime.seed={seed}", f"train.epochs={epochs}",
                                        "train.baseline=false", *extra])
        start = time.perf_counter()
        result = train(spec, write=False, quiet=True)
        row = dict(result.metrics[-1], seconds=time.perf_counter() - start)
        rows.append(row)
        description = result.summary["data"]
        scores = "  ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        print(f"{label} seed {seed}: {scores} ({row['seconds']:.0f} s)", flush=True)
    return rows, description


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", type=int, nargs="+", default=None,
                        help="run only these variants of the recipe (0-based positions in its list)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra KEY=VALUE override for every run (e.g. runtime.threads=1)")
    args = parser.parse_args()
    table = ["| variant | metric | accuracy (%) mean ± std |", "| --- | --- | --- |"]
    data_note = ""
    variants = RECIPES[args.recipe]
    for label, path, overrides in [variants[i] for i in args.only] if args.only is not None else variants:
        rows, source = run(label, path, overrides, args.seeds, args.epochs, args.extra)
        names = {"val_top1": "top-1", "val_knn": "k-NN top-1 (k=20)", "val_linear_probe": "linear probe top-1"}
        for key in sorted(k for k in rows[0] if k.startswith("val_")):
            name = names.get(key) or key.split("/", 1)[1]
            table.append(f"| {label} | {name} | {fmt([r[key] for r in rows])} |")
        data_note = f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.epochs} epochs"
    text = "\n".join([f"Data: {source}; {data_note}.", "", *table, ""])
    command = " ".join(["python3 benchmarks/accuracy.py", args.recipe, "--seeds", *map(str, args.seeds),
                        "--epochs", str(args.epochs), *(f"--set {e}" for e in args.extra),
                        *(["--only", *map(str, args.only)] if args.only is not None else [])])
    text += f"\nCommand: `{command}`\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
