"""kdgraph against independent plain-PyTorch references of each method family (issues #20, #21): metrics over seeds.

    python3 benchmarks/fidelity.py --seeds 0 1 2 --epochs 6 --out docs/results/fidelity.md       # plain KD (#21)
    python3 benchmarks/fidelity.py self_distillation --seeds 0 1 2 --epochs 30 \\
        --out docs/results/self_distillation.md --plot docs/results/self_distillation.png

A family is one reference script under benchmarks/references (plain PyTorch, imports nothing from kdgraph), one
kdgraph spec, and its variants: each a reference variant and the same run as ``--set`` overrides of the spec. For every
variant and seed, the reference and kdgraph run one after another, each in its own process. Every finished run is
appended to ``--log`` (JSON lines: final metrics and the per-epoch curve) and skipped when the command is run again,
so an interrupted sweep continues where it stopped. The table gives, per variant and metric, mean ± std per side,
kdgraph − reference and whether that lies within 2 standard deviations, and each variant's gain over the family's
first variant (the student alone) on both sides with whether it exceeds 2 standard deviations. ``--plot`` draws the
curves over epochs, one panel per metric (mean over seeds; solid kdgraph, dashed reference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "benchmarks" / "references"
METHODS = ROOT / "specs" / "methods"
TEACHER = ROOT / "src" / "kdgraph" / "models" / "weights" / "fmnist_resnet.safetensors"
WIDE_TEACHER = ROOT / "src" / "kdgraph" / "models" / "weights" / "fmnist_cnn_wide.safetensors"


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: list[str]  # kdgraph: --set KEY=VALUE on the family's spec
    reference: list[str] = field(default_factory=list)  # reference: arguments after the script (the variant first)


@dataclass(frozen=True)
class Family:
    """A reference script, kdgraph's spec, the variants (the first is the student alone) and what is compared."""

    script: str
    spec: Path
    variants: dict[str, Variant]
    metrics: tuple[str, ...]
    data: str
    default_epochs: int
    reference_args: tuple[str, ...] = ()  # for every reference run
    kdgraph_overrides: tuple[str, ...] = ()  # for every kdgraph run


# -- plain KD, FitNet and the projector recipe (#21; the projector ablation of #20) -----------------------------------
PAIR_MSE = "distill.pairs=[{teacher: layer3, student: block3, projector: conv1x1, loss: mse}]"


def pair_projector(normalize: str = "{name: bn, eps: 1.0e-4}", loss: str = "{name: logsum, alpha: 4}") -> str:
    return (f"distill.pairs=[{{teacher: layer3, student: block3, pool: gap, projector: {{name: linear, bias: true}}, "
            f"normalize: {normalize}, loss: {loss}, weight: 2.0}}]")


PROJECTOR = ["train.ce_weight=1", "distill.logits={loss: kl, temperature: 1.0, weight: 1.0}"]
KD_TEACHER = ["--teacher", str(TEACHER)]
KD = {
    "alone": Variant("student alone", ["teacher=null", "distill.logits=null", "train.ce_weight=1"], ["alone"]),
    "kd": Variant("KD: 0.1·CE + 0.9·T²·KL, T = 4", [], ["kd", *KD_TEACHER]),
    "fitnet": Variant("FitNet: KD + MSE(1x1 conv(block3), layer3)", [PAIR_MSE], ["fitnet", *KD_TEACHER]),
    "projector": Variant("projector: CE + KL(T = 1) + 2·log Σ|BN(W·GAP) − BN(GAP)|⁴", [*PROJECTOR, pair_projector()],
                         ["projector", *KD_TEACHER]),
    "projector-nonorm": Variant("projector without normalisation: 2·log Σ|W·GAP − GAP|⁴",
                                [*PROJECTOR, pair_projector(normalize="none")], ["projector-nonorm", *KD_TEACHER]),
    "projector-l2": Variant("projector with L2 instead of log-sum: 2·mean (BN(W·GAP) − BN(GAP))²",
                            [*PROJECTOR, pair_projector(loss="mse")], ["projector-l2", *KD_TEACHER]),
}
FMNIST_KD = Family("fmnist_kd.py", REFERENCES / "fmnist_kd.yaml", {k: KD[k] for k in ("alone", "kd", "fitnet",
                                                                                      "projector")},
                   ("val_top1",), "full Fashion-MNIST", 6)
PROJECTOR_ABLATION = Family("fmnist_kd.py", REFERENCES / "fmnist_kd.yaml",
                            {k: KD[k] for k in ("alone", "kd", "projector", "projector-nonorm", "projector-l2")},
                            ("val_top1",), "full Fashion-MNIST", 6)
VARIANTS: dict[str, list[str]] = {name: v.overrides for name, v in KD.items()}  # tests/benchmarks use these

# -- self-distillation (BYOT) -----------------------------------------------------------------------------------------
SELF_DISTILLATION = Family(
    "self_distillation.py", METHODS / "self_distillation.yaml", {
        "alone": Variant("ResNet alone (CE)", ["teacher=null", "self_distill=null"], ["alone"]),
        "byot": Variant("self-distillation (heads after layer1, layer2)", [], ["byot"]),
        "deep-supervision": Variant("heads with CE only (no distillation terms)",
                                    ["self_distill.alpha=0", "self_distill.feature_weight=0"], ["deep-supervision"]),
    },
    ("val_top1", "val_top1/layer1", "val_top1/layer2", "val_top1/deepest", "val_top1/ensemble"),
    "embedded Fashion-MNIST subset (12,000 train / 2,000 test)", 30, ("--data", "embedded"))

# -- function matching -----------------------------------------------------------------------------------------------
FUNCTION_MATCHING = Family(
    "function_matching.py", METHODS / "function_matching.yaml", {
        "alone": Variant("student alone (CE, same crops and mixup)",
                         ["teacher=null", "distill.logits=null", "train.ce_weight=1"], ["alone"]),
        "function-matching": Variant("function matching (consistent views, mixup)", [],
                                     ["function-matching", *KD_TEACHER]),
        "independent": Variant("independent views", ["data.views=independent"], ["independent", *KD_TEACHER]),
        "fixed": Variant("fixed teacher (cached outputs), mixup", ["teacher.cache=outputs"], ["fixed", *KD_TEACHER]),
        "fixed-nomix": Variant("fixed teacher, no mixup", ["teacher.cache=outputs", "data.mix=none"],
                               ["fixed-nomix", *KD_TEACHER]),
        "consistent-nomix": Variant("consistent views, no mixup (plain KD on shared crops)", ["data.mix=none"],
                                    ["consistent-nomix", *KD_TEACHER]),
    },
    ("val_top1",), "the first 512 Fashion-MNIST training images, full test set", 1000)

# -- SimReg -----------------------------------------------------------------------------------------------------------
def mlp_head(width: int, deep: bool = True) -> str:
    """The SimReg head as a projector value: ``Linear BN ReLU Linear`` (shallow) or the paper's four layers (deep),
    hidden widths ``width``·d."""
    w = f"{width}d"
    if not deep:
        return f"{{name: mlp, hidden: [{w}], bn: [true], relu: [true]}}"
    return f"{{name: mlp, hidden: [{w}, d, {w}], bn: [true, false, true], relu: [true, false, true]}}"


def simreg_heads(head: str) -> list[str]:
    """Both pairs of specs/methods/simreg_two_teachers.yaml with another head."""
    projector = {"linear": "{name: linear}", "mlp-deep": mlp_head(2), "mlp-shallow": mlp_head(2, deep=False),
                 "mlp-shallow-8d": mlp_head(8, deep=False), "mlp-deep-8d": mlp_head(8)}[head]
    return [f"distill.pairs[{i}].projector={projector}" for i in (0, 1)]


def one_teacher(name: str, model: str, width: int = 2) -> list[str]:
    """The spec with one teacher (``name``: ``kdgraph:MODEL``) and the deep MLP head, hidden widths ``width``·d."""
    return [f"teachers=[{{name: {name}, model: 'kdgraph:{model}', weights: builtin}}]",
            f"distill.pairs=[{{name: {name}, teacher_model: {name}, teacher: 'fc:input', student: 'fc:input', "
            f"projector: {mlp_head(width)}, loss: cosine}}]"]


SIMREG = Family(
    "simreg.py", METHODS / "simreg_two_teachers.yaml", {
        "alone": Variant("student alone (CE, same views)", ["teachers=[]", "distill.pairs=[]", "train.ce_weight=1"],
                         ["alone"]),
        "simreg": Variant("SimReg: 2 teachers, deep MLP heads (2d), no labels", simreg_heads("mlp-deep"), ["simreg"]),
        "simreg-ce": Variant("SimReg + CE (2d)", [*simreg_heads("mlp-deep"), "train.ce_weight=1"], ["simreg-ce"]),
        "mlp-shallow": Variant("shallower head: Linear BN ReLU Linear (2d)", simreg_heads("mlp-shallow"),
                              ["mlp-shallow"]),
        "linear": Variant("linear head", simreg_heads("linear"), ["linear"]),
        "resnet-only": Variant("one teacher: the ResNet (2d)", one_teacher("resnet", "fmnist_resnet"), ["resnet-only"]),
        "wide-only": Variant("one teacher: the wide CNN (2d)", one_teacher("cnn_wide", "fmnist_cnn_wide"),
                             ["wide-only"]),
        # the head-width search: hidden widths 8d instead of 2d
        "simreg-wide-head": Variant("SimReg: deep MLP heads, hidden 8d (the shipped spec)",
                                    simreg_heads("mlp-deep-8d"), ["simreg-wide-head"]),
        "simreg-ce-wide-head": Variant("SimReg + CE, hidden 8d", [*simreg_heads("mlp-deep-8d"), "train.ce_weight=1"],
                                       ["simreg-ce-wide-head"]),
        "mlp-shallow-wide-head": Variant("shallower head, hidden 8d", simreg_heads("mlp-shallow-8d"),
                                         ["mlp-shallow-wide-head"]),
        "resnet-only-wide-head": Variant("one teacher: the ResNet, hidden 8d",
                                         one_teacher("resnet", "fmnist_resnet", 8), ["resnet-only-wide-head"]),
        "wide-only-wide-head": Variant("one teacher: the wide CNN, hidden 8d",
                                       one_teacher("cnn_wide", "fmnist_cnn_wide", 8), ["wide-only-wide-head"]),
    },
    ("val_knn", "val_linear_probe"), "embedded Fashion-MNIST subset (12,000 train / 2,000 test)", 10,
    ("--data", "embedded"), ("data.source=embedded",))

# -- InDistill --------------------------------------------------------------------------------------------------------
EMBEDDING_PKT = "{name: embedding, teacher: 'fc:input', student: 'fc:input', loss: pkt}"
KD_STAGE = "{name: kd, epochs: 8, pairs: [embedding], logits: true}"
INDISTILL = Family(
    "indistill.py", METHODS / "indistill.yaml", {
        "alone": Variant("student alone", ["teacher=null", "distill.logits=null", "distill.pairs=[]",
                                           "train.stages=[]"], ["alone"]),
        "kd": Variant("KD only (KL T = 4 + PKT, all epochs)", [f"distill.pairs=[{EMBEDDING_PKT}]", "train.stages=[]"],
                      ["kd", *KD_TEACHER]),
        "fitnet": Variant("FitNet warm-up (layer3 through a 1x1 conv), then KD",
                          ["distill.pairs=[{name: fitnet, teacher: layer3, student: block3, projector: conv1x1, "
                           f"normalize: bn, loss: mse}}, {EMBEDDING_PKT}]",
                           f"train.stages=[{{name: fitnet, epochs: 4, pairs: [fitnet]}}, {KD_STAGE}]"],
                          ["fitnet", *KD_TEACHER]),
        "all-at-once": Variant("pruned layers all at once, then KD",
                               [f"train.stages=[{{name: layers, epochs: 4, pairs: [layer1, layer2, layer3]}}, "
                                f"{KD_STAGE}]"], ["all-at-once", *KD_TEACHER]),
        "indistill": Variant("InDistill: pruned layers one by one (1, 1, 2 epochs), then KD", [],
                             ["indistill", *KD_TEACHER]),
        # the stage-length search, run with --epochs 16 (the last stage, KD, keeps 8 epochs)
        "indistill-long": Variant("InDistill, stages twice as long (2, 2, 4 epochs), then KD",
                                  ["train.epochs=16",
                                   "train.stages=[{name: layer1, epochs: 2, pairs: [layer1]}, {name: layer2, epochs: 2, "
                                   "pairs: [layer2]}, {name: layer3, epochs: 4, pairs: [layer3]}, "
                                   "{name: kd, epochs: 8, pairs: [embedding], logits: true}]"],
                                  ["indistill-long", *KD_TEACHER]),
        "all-at-once-long": Variant("pruned layers all at once for 8 epochs, then KD",
                                    ["train.epochs=16",
                                     f"train.stages=[{{name: layers, epochs: 8, pairs: [layer1, layer2, layer3]}}, "
                                     f"{KD_STAGE}]"], ["all-at-once-long", *KD_TEACHER]),
    },
    ("val_top1", "val_map"), "embedded Fashion-MNIST subset (12,000 train / 2,000 test)", 12, ("--data", "embedded"),
    ("data.source=embedded",))

FAMILIES: dict[str, Family] = {"fmnist_kd": FMNIST_KD, "projector": PROJECTOR_ABLATION,
                               "self_distillation": SELF_DISTILLATION, "function_matching": FUNCTION_MATCHING,
                               "simreg": SIMREG, "indistill": INDISTILL}


# -- running ----------------------------------------------------------------------------------------------------------
def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_reference(family: Family, variant: str, seed: int, epochs: int, threads: int) -> dict:
    """The reference's final metrics and curve (a script that prints only ``top1`` gives ``val_top1``)."""
    command = [sys.executable, str(REFERENCES / family.script), *family.variants[variant].reference, "--seed",
               str(seed), "--epochs", str(epochs), "--threads", str(threads), *family.reference_args]
    row = _last_json(subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    return {"metrics": row.get("metrics") or {"val_top1": row["top1"]}, "curve": row.get("curve", []),
            "seconds": row.get("seconds")}


def epoch_overrides(family: Family, variant: str, epochs: int) -> list[str]:
    """``train.epochs``, and with a curriculum the last stage's length, so that the stages add up to ``epochs``."""
    sys.path.insert(0, str(ROOT / "src"))
    from kdgraph.spec import load_spec

    stages = load_spec(family.spec, [*family.kdgraph_overrides, *family.variants[variant].overrides]).train.stages
    last = [f"train.stages[{len(stages) - 1}].epochs={epochs - sum(s.epochs for s in stages[:-1])}"] if stages else []
    return [f"train.epochs={epochs}", *last]


def run_kdgraph(family: Family, name: str, variant: str, seed: int, epochs: int, threads: int, work: Path) -> dict:
    run_dir = work / f"kdgraph-{variant}-s{seed}"
    overrides = [*family.kdgraph_overrides, *family.variants[variant].overrides, f"runtime.seed={seed}",
                 *epoch_overrides(family, variant, epochs), f"runtime.threads={threads}", f"output={run_dir}"]
    command = [sys.executable, "-m", "kdgraph", "train", str(family.spec), "--quiet", "--overwrite",
               *(arg for o in overrides for arg in ("--set", o))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(REFERENCES)]), HF_HUB_OFFLINE="1")
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: v for k, v in r.items() if k == "epoch" or k.startswith("val_")} for r in rows]
    return {"metrics": {k: v for k, v in rows[-1].items() if k.startswith("val_")},
            "curve": [c for c in curve if len(c) > 1], "seconds": round(sum(r["time_s"] for r in rows), 1)}


# -- tables and plots -------------------------------------------------------------------------------------------------
def stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _values(rows: list[dict], family: str, variant: str, side: str, metric: str, seeds: list[int],
            epochs: int) -> list[float]:
    return [r["metrics"][metric] for r in rows if r["family"] == family and r["variant"] == variant
            and r["side"] == side and r["seed"] in seeds and r["epochs"] == epochs and metric in r["metrics"]]


def table(rows: list[dict], name: str, seeds: list[int], epochs: int) -> str:
    """Per variant and metric: both sides (mean ± std), their difference, and the gain over the first variant."""
    family = FAMILIES[name]
    first = next(iter(family.variants))
    lines = ["| variant | metric | reference | kdgraph | kdgraph − reference | within 2 std | gain over "
             f"{family.variants[first].label}: reference / kdgraph | gain > 2 std (ref / kdgraph) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, spec in family.variants.items():
        for metric in family.metrics:
            sides = {side: _values(rows, name, variant, side, metric, seeds, epochs) for side in ("reference", "kdgraph")}
            if not all(len(v) == len(seeds) for v in sides.values()):
                continue
            (m_r, s_r), (m_k, s_k) = stats(sides["reference"]), stats(sides["kdgraph"])
            one = len(seeds) < 2  # one run per side: no spread, so no verdicts
            same = "–" if one else "yes" if abs(m_k - m_r) <= 2 * max(s_r, s_k) else "**no**"
            gain, wins = "", ""
            base_metric = "val_top1" if metric.startswith("val_top1") else metric
            base = {side: _values(rows, name, first, side, base_metric, seeds, epochs) for side in sides}
            if variant != first and all(len(v) == len(seeds) for v in base.values()):
                deltas, verdicts = [], []
                for side in ("reference", "kdgraph"):
                    (m, s), (m0, s0) = stats(sides[side]), stats(base[side])
                    deltas.append(f"{100 * (m - m0):+.2f}")
                    verdicts.append("–" if one else "yes" if m - m0 > 2 * max(s, s0) else "no")
                gain, wins = " / ".join(deltas), " / ".join(verdicts)
            label = spec.label.replace("|", "\\|")  # a formula's |x| must not split the markdown cell
            ref, ours = (f"{100 * m:.2f}" + ("" if one else f" ± {100 * s:.2f}") for m, s in ((m_r, s_r), (m_k, s_k)))
            lines.append(f"| {label} | {metric.removeprefix('val_')} | {ref} | {ours} | {100 * (m_k - m_r):+.2f} | "
                         f"{same} | {gain} | {wins} |")
    return "\n".join(lines)


def plot(rows: list[dict], name: str, seeds: list[int], epochs: int, path: Path,
         metrics: Optional[list[str]] = None) -> None:
    """One panel per metric (default: the family's), two to a row: the mean curve over the seeds per variant, kdgraph
    solid, the reference dashed, one colour per variant. The y axis spans the curves after the first third of the
    epochs, where the variants separate (the first epochs' low accuracies would flatten the differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = FAMILIES[name]
    metrics = metrics or list(family.metrics)
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        late: list[float] = []
        for i, (variant, spec) in enumerate(family.variants.items()):
            for side, style in (("kdgraph", "-"), ("reference", "--")):
                curves = [r["curve"] for r in rows if r["family"] == name and r["variant"] == variant
                          and r["side"] == side and r["seed"] in seeds and r["epochs"] == epochs and r.get("curve")]
                by_epoch: dict[int, list[float]] = {}
                for curve in curves:
                    for point in curve:
                        if metric in point:
                            by_epoch.setdefault(point["epoch"], []).append(point[metric])
                xs = sorted(e for e, v in by_epoch.items() if len(v) == len(curves))
                if xs:
                    ys = [100 * statistics.mean(by_epoch[e]) for e in xs]
                    ax.plot(xs, ys, style, color=f"C{i}", label=f"{spec.label} ({side})")
                    late += [y for x, y in zip(xs, ys) if x > epochs / 3]
        if late:
            ax.set_ylim(min(late) - 0.5, max(late) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {metric.removeprefix('val_')} (%)")
        over = f"mean of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
        ax.set_title(f"{name}: {metric.removeprefix('val_')}, {over} (y: after epoch {epochs // 3})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(family.data, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", nargs="?", default="fmnist_kd", choices=list(FAMILIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the family's budget")
    parser.add_argument("--variants", nargs="+", default=None, help="default: all of the family's")
    parser.add_argument("--sides", nargs="+", default=["reference", "kdgraph"], choices=["reference", "kdgraph"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="default: runs/fidelity (fmnist_kd), else "
                        "runs/fidelity/FAMILY")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines of finished runs (default: WORK/runs.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the curves over epochs here (PNG or SVG)")
    parser.add_argument("--plot-metrics", nargs="+", default=None, help="default: the family's metrics, a panel each")
    args = parser.parse_args()
    family = FAMILIES[args.family]
    epochs = args.epochs or family.default_epochs
    variants = args.variants or list(family.variants)
    unknown = [v for v in variants if v not in family.variants]
    if unknown:
        parser.error(f"{args.family} has no variant {', '.join(unknown)} (variants: {', '.join(family.variants)})")
    work = args.work or (ROOT / "runs" / "fidelity" / ("" if args.family == "fmnist_kd" else args.family))
    log = args.log or work / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for row in rows:  # rows of the first version of this script: plain KD, top-1 only
        row.setdefault("family", "fmnist_kd")
        row.setdefault("metrics", {"val_top1": row.get("top1")})
    for variant in variants:
        for seed in args.seeds:
            for side in args.sides:
                if any(r["family"] == args.family and r["variant"] == variant and r["seed"] == seed
                       and r["side"] == side and r["epochs"] == epochs for r in rows):
                    continue
                result = (run_reference(family, variant, seed, epochs, args.threads) if side == "reference" else
                          run_kdgraph(family, args.family, variant, seed, epochs, args.threads, work))
                row = {"family": args.family, "variant": variant, "seed": seed, "side": side, "epochs": epochs,
                       "top1": result["metrics"].get("val_top1"), **result}
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    command = " ".join(["python3 benchmarks/fidelity.py", *([args.family] if args.family != "fmnist_kd" else []),
                        "--seeds", *map(str, args.seeds), "--epochs", str(epochs), "--threads", str(args.threads)])
    text = (f"{family.data}, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {epochs} epochs, final test "
            f"metrics (%), mean ± std.\n\n{table(rows, args.family, args.seeds, epochs)}\n\nCommand: `{command}`\n")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot:
        plot(rows, args.family, args.seeds, epochs, args.plot, args.plot_metrics)


if __name__ == "__main__":
    main()
