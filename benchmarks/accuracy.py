"""Accuracy of method recipes on Fashion-MNIST over several seeds: mean ± std top-1, as a markdown table.

    python3 benchmarks/accuracy.py self_distillation --seeds 0 1 2 --epochs 3 --out docs/results/self_distillation.md

Each recipe is compared with the same student trained alone for the same budget (and plain KD where a teacher
exists). Uses the full Fashion-MNIST when Debian's dataset-fashion-mnist is installed (or data.root), else the
embedded subset; the table says which.

With ``--log FILE`` every finished run is appended as a JSON line and skipped when asked again, so a sweep can be
interrupted, or split over processes with ``--only`` (each ``--set runtime.threads=1``) sharing one log; a last call
without ``--only`` then writes the whole table from the log:

    python3 benchmarks/accuracy.py zoo --epochs 2 --set runtime.threads=1 --log runs/zoo.jsonl --only 0 2 4 &
    python3 benchmarks/accuracy.py zoo --epochs 2 --set runtime.threads=1 --log runs/zoo.jsonl --only 1 3 5
"""

from __future__ import annotations

import argparse
import json
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
    "zoo": [
        ("student alone", "specs/zoo/kd.yaml", ["teacher=null", "distill.logits=null"]),
        ("plain KD (logits, T=4)", "specs/zoo/kd.yaml", []),
        *[(label, f"specs/zoo/{name}.yaml", []) for name, label in (
            ("dkd", "DKD"), ("dist", "DIST"), ("kd_ls", "KD + logit standardisation"),
            ("dkd_ls", "DKD + logit standardisation"), ("at", "AT"), ("nst", "NST"), ("fsp", "FSP (+1 init epoch)"),
            ("ab", "AB (+1 init epoch)"), ("ofd", "OFD"), ("ft", "FT (+1 paraphraser epoch)"), ("mgd", "MGD"),
            ("reviewkd", "ReviewKD"), ("sp", "SP"), ("cc", "CC"), ("rkd", "RKD"), ("vid", "VID"), ("crd", "CRD"),
            ("ickd", "ICKD"))],
    ],
    "zoo-diagnostics": [  # why a catalogue method lost at the catalogue's short budget: one change each
        ("DKD + logit standardisation, DKD's warm-up (half weight in epoch 1)", "specs/zoo/dkd_ls.yaml",
         ["distill.logits.warmup_epochs=2"]),
        *[(f"{label}, weight / 10", f"specs/zoo/{name}.yaml",
           [f"distill.pairs[{i}].weight={weight / 10:g}" for i, weight in enumerate(weights)])
          for name, label, weights in (("nst", "NST", (50.0,) * 3), ("at", "AT", (500.0,) * 3),
                                       ("ofd", "OFD", (2.5e-4, 5.0e-4, 1.0e-3)), ("rkd", "RKD", (1.0,)))],
        ("KD + logit standardisation, weight 0.9 (plain KD's) instead of 9", "specs/zoo/kd_ls.yaml",
         ["distill.logits.weight=0.9"]),
        ("DKD, DKD's warm-up (half weight in epoch 1)", "specs/zoo/dkd.yaml", ["distill.logits.warmup_epochs=2"]),
    ],
    "quickstart": [
        ("student alone", "specs/quickstart.yaml", ["teacher=null", "distill.logits=null", "distill.pairs=[]"]),
        ("KD (logits + layer3 pair)", "specs/quickstart.yaml", []),
    ],
}


PUBLISHED = {  # CIFAR-100 top-1, ResNet32x4 -> ResNet8x4, as published (docs/losses.md): for reference only
    "student alone": "72.50", "plain KD (logits, T=4)": "73.33", "DKD": "76.32", "DIST": "76.31",
    "KD + logit standardisation": "76.62", "DKD + logit standardisation": "77.01", "FSP (+1 init epoch)": "72.62",
    "AB (+1 init epoch)": "73.17", "OFD": "74.95", "FT (+1 paraphraser epoch)": "72.86", "MGD": "-",
    "ReviewKD": "75.63", "SP": "72.94", "CC": "72.97", "RKD": "71.90", "VID": "73.09", "CRD": "75.51",
    "ICKD": "75.25", "NST": "73.30", "AT": "73.44",
}


def epoch_overrides(path: str, overrides: list[str], epochs: int) -> list[str]:
    """``train.epochs=N``; for a spec with stages, N is the last stage's length and the earlier stages (an
    initialisation, a pre-stage) keep theirs, so a method's pre-stage comes on top of the common budget."""
    spec = load_spec(ROOT / path, overrides)
    if not spec.train.stages:
        return [f"train.epochs={epochs}"]
    before = sum(stage.epochs for stage in spec.train.stages[:-1])
    last = len(spec.train.stages) - 1
    return [f"train.stages[{last}].epochs={epochs}", f"train.epochs={before + epochs}"]


def _logged(log: Path | None, key: dict) -> dict | None:
    """The logged run with these label, seed, epochs and overrides, if one finished before."""
    if log is None or not log.exists():
        return None
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if all(row.get(k) == v for k, v in key.items()):
            return row
    return None


def run(label: str, path: str, overrides: list[str], seeds: list[int], epochs: int,
        extra: list[str] = (), log: Path | None = None) -> tuple[list[dict], str]:
    rows, description = [], ""
    for seed in seeds:
        key = {"label": label, "seed": seed, "epochs": epochs, "extra": list(extra)}
        done = _logged(log, key)
        if done is not None:
            rows.append(done["metrics"])
            description = done["data"]
            continue
        spec = load_spec(ROOT / path, [*overrides, f"runtime.seed={seed}", *epoch_overrides(path, overrides, epochs),
                                        "train.baseline=false", *extra])
        start = time.perf_counter()
        result = train(spec, write=False, quiet=True)
        row = dict(result.metrics[-1], seconds=time.perf_counter() - start)
        rows.append(row)
        description = result.summary["data"]
        scores = "  ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        print(f"{label} seed {seed}: {scores} ({row['seconds']:.0f} s)", flush=True)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:  # one short line per write: processes sharing the log do not interleave
                f.write(json.dumps({**key, "data": description, "metrics": row}) + "\n")
    return rows, description


NAMES = {"val_top1": "top-1", "val_knn": "k-NN top-1 (k=20)", "val_linear_probe": "linear probe top-1",
         "val_map": "retrieval mAP", "val_agree": "top-1 agreement with the teacher"}


def metric_name(key: str) -> str:
    """A metrics row's key as the table names it: ``val_top1/head1`` -> ``head1``, ``val_agree/resnet`` -> ``top-1
    agreement with the teacher (resnet)``."""
    base, _, sub = key.partition("/")
    if base == "val_agree" and sub:
        return f"{NAMES[base]} ({sub})"
    return NAMES.get(key) or sub or key[4:]


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3,
                        help="training epochs (a spec with stages: the last stage's; its earlier stages come on top)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", type=int, nargs="+", default=None,
                        help="run only these variants of the recipe (0-based positions in its list)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra KEY=VALUE override for every run (e.g. runtime.threads=1)")
    parser.add_argument("--log", type=Path, default=None,
                        help="JSON lines of finished runs: appended to, and runs found there are not redone")
    args = parser.parse_args()
    zoo = args.recipe == "zoo"
    table = ["| variant | metric | accuracy (%) mean ± std |" + (" vs plain KD | CIFAR-100, published |" if zoo else ""),
             "| --- | --- | --- |" + (" --- | --- |" if zoo else "")]
    data_note = ""
    variants = RECIPES[args.recipe]
    reference = None
    for label, path, overrides in [variants[i] for i in args.only] if args.only is not None else variants:
        rows, source = run(label, path, overrides, args.seeds, args.epochs, args.extra, args.log)
        keys = sorted((k for k in rows[0] if k.startswith("val_") and not k.startswith("val_kl")),  # % only
                      key=lambda k: (k != "val_top1", k))
        for key in keys:
            name = metric_name(key)
            line = f"| {label} | {name} | {fmt([r[key] for r in rows])} |"
            if zoo:
                mean = statistics.mean(r[key] for r in rows)
                reference = mean if label.startswith("plain KD") and key == "val_top1" else reference
                delta = f"{100 * (mean - reference):+.2f}" if reference is not None and key == "val_top1" else ""
                line += f" {delta} | {PUBLISHED.get(label, '') if key == 'val_top1' else ''} |"
            table.append(line)
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
