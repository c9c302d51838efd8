"""Property-based robustness of spec handling: random documents, random YAML text, mutations of the quickstart spec
and random `--set` overrides go through `kdgraph validate` / `kdgraph train --dry-run`, in-process.

Whatever comes in: no traceback, no uncaught exception, exit code 0 (the spec resolved) or 2 (a user error), no
file written, and no hang (an alarm fails any example that runs longer than ALARM_S). Derandomized: CI runs the
same examples every time.
"""

import contextlib
import copy
import signal
import tempfile
from pathlib import Path

import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdgraph.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
ALARM_S = 60

# The quickstart spec made small and self-contained: embedded data cut to a few batches, no builtin weights needed
# (so that mutations are checked all the way to the layer maps), no baseline run.
QUICKSTART = yaml.safe_load((ROOT / "specs" / "quickstart.yaml").read_text())
QUICKSTART["teacher"].pop("weights", None)
QUICKSTART["data"].update(source="embedded", batch_size=16, train_subset=64, test_subset=32)
QUICKSTART["train"].update(epochs=1, baseline=False)
QUICKSTART["runtime"] = {"device": "cpu", "seed": 0}
QUICKSTART["output"] = "runs/fuzz"

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ["name", "teacher", "student", "data", "distill", "train", "runtime", "output", "model", "kwargs", "weights",
        "dataset", "root", "source", "batch_size", "image_size", "train_subset", "test_subset", "synthetic",
        "logits", "pairs", "projector", "normalize", "pool", "resize", "loss", "weight", "temperature", "epochs",
        "optimizer", "schedule", "lr", "device", "seed", "precision", "dir", "keep", "self_distill", "heads"]
LAYERS = ["layer1", "layer2", "layer3", "layer3.1", "layer3.1.relu_1", "block1", "block2", "block3", "block3.2",
          "stem", "fc", "pool", "flatten", "x", "output", "layer3:input", "block3:output", "fc:input", ""]
MODELS = ["kdgraph:fmnist_resnet", "kdgraph:fmnist_cnn", "kdgraph:", "kdgraph:fmnist", "timm:", "timm:resnet1",
          "torchvision:", "torchvision:resnet1", "python:kdgraph.models.zoo:FmnistCNN", "python:kdgraph.models.zoo:",
          "python:", "live:student", "keras:x", "fmnist_cnn", ""]
ident = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.:-", min_size=0, max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=96), st.sampled_from([0, -1, 2**31, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.text(max_size=12), ident,
    st.sampled_from(KEYS + LAYERS + MODELS + ["auto", "none", "gap", "mse", "kl", "sgd", "cpu", "cuda", "fp16"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), ident), inner, max_size=5)),
    max_leaves=20,
)
SNIPPETS = ["name: x", "student: {model: 'kdgraph:fmnist_cnn'}", "a: &x [1, 2]", "b: *x", "<<: *x", "c: *nope",
            "\tname: y", "{", "]", "---", "? [1]\n: 2", "name: !!python/object/apply:os.system ['true']",
            "d: !!binary AAAA", "e: !!set {a, b}", "f: 2001-01-01", "g: !custom 1", "  - item", "h: 'open",
            "train: {epochs: 1}", "train: {epochs: 2}", "i: {j: {k: {l: [[[[1]]]]}}}", "%YAML 1.1", "...", "#"]
yaml_text = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(SNIPPETS), max_size=6).map("\n".join))

# --set overrides: real dotted paths, random ones, indices; values as the user would type them
PATHS = ["name", "teacher", "teacher.model", "teacher.kwargs", "teacher.weights", "student.model",
         "student.kwargs.widths", "data", "data.dataset", "data.root", "data.batch_size", "data.image_size",
         "data.train_subset", "data.source", "distill", "distill.logits", "distill.logits.temperature",
         "distill.pairs", "distill.pairs[0]", "distill.pairs[0].teacher", "distill.pairs[0].student",
         "distill.pairs[0].projector", "distill.pairs[0].pool", "distill.pairs[0].loss", "distill.pairs[1].weight",
         "distill.pairs.0.normalize", "train.epochs", "train.optimizer.lr", "train.optimizer", "runtime.device",
         "runtime.seed", "output", "output.keep", "train.epochs.x", "a.b.c", "[0]", "distill.pairs[a]", "0"]
RAW_VALUES = ["", "1", "0", "-1", "1e-3", ".inf", ".nan", "true", "null", "~", "[1, 2]", "{a: 1}", "[", "{",
              "layer3", "block3", "kdgraph:fmnist_cnn", "timm:resnet1", "gap", "mlp", "{name: mlp, hidden: [8]}",
              "cuda", "!!python/name:os.system", "'quoted", "a=b", "x\ty"]
override = st.builds(lambda p, v: f"{p}={v}", st.sampled_from(PATHS) | ident.filter(lambda t: t.strip(".")),
                     st.sampled_from(RAW_VALUES) | st.text(max_size=10))
# one item in eight is free text (mostly without '='): that path is cheap and found at once
overrides = st.lists(st.integers(0, 7).flatmap(lambda i: st.text(max_size=15) if i == 0 else override),
                     min_size=1, max_size=3)


@contextlib.contextmanager
def _alarm(seconds: int):
    def on_alarm(signum, frame):
        raise TimeoutError(f"example ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _files(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def check(spec_text: str, command: str = "validate", sets: list[str] = ()) -> int:
    """Run one spec through the CLI in a fresh folder and check the robustness contract; returns the exit code."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        root = Path(tmp)
        (root / "spec.yaml").write_text(spec_text, encoding="utf-8")
        (root / "mine").mkdir()
        (root / "mine" / "notes.txt").write_text("keep me\n")
        before = _files(root)
        args = [command, "spec.yaml", *(["--dry-run"] if command == "train" else [])]
        args += [a for item in sets for a in ("--set", item)]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with _alarm(ALARM_S):
                result = CliRunner().invoke(main, args)
        finally:
            torch.set_num_threads(previous)
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (
            f"uncaught {type(exc).__name__}: {exc}\nargs: {args}\nspec:\n{spec_text}\n{result.output}")
        assert "Traceback" not in result.output, result.output
        assert result.exit_code in (0, 2), f"exit {result.exit_code}\nargs: {args}\n{result.output}"
        if result.exit_code == 2:
            assert "rror" in result.output, result.output  # one message saying what is wrong
        assert _files(root) == before, f"files changed by {args}"
        return result.exit_code


@FUZZ
@given(doc=documents, as_mapping=st.booleans())
def test_random_documents(doc, as_mapping):
    if as_mapping and not isinstance(doc, dict):
        doc = {"student": {"model": "kdgraph:fmnist_cnn"}, "train": doc}
    check(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(text=yaml_text)
def test_random_yaml_text(text):
    check(text)


def _paths(node, prefix=()):
    """Every key path of a nested dict/list document."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


ALL_PATHS = [p for p in _paths(QUICKSTART) if p]
mutation = st.tuples(
    st.sampled_from(["drop", "replace", "layer", "model", "wrap"]),
    st.sampled_from(ALL_PATHS),
    st.one_of(scalars, documents),
    st.sampled_from(LAYERS) | ident,
    st.sampled_from(MODELS) | st.builds(lambda s, n: s + n, st.sampled_from(["kdgraph:", "timm:", "torchvision:", ""]),
                                        ident),
)


def _mutate(doc: dict, op: str, path: tuple, value, layer: str, model: str) -> None:
    parent = doc
    for part in path[:-1]:
        if not isinstance(parent, (dict, list)):
            return
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if not isinstance(parent, (dict, list)) or (isinstance(parent, list) and not (isinstance(last, int) and last < len(parent))) \
            or (isinstance(parent, dict) and last not in parent):
        return
    if op == "drop":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "layer":
        pairs = doc.get("distill", {}).get("pairs") if isinstance(doc.get("distill"), dict) else None
        if isinstance(pairs, list) and pairs and isinstance(pairs[0], dict):
            pairs[0]["teacher" if len(layer) % 2 else "student"] = layer
    elif op == "model":
        side = doc.get("teacher" if len(model) % 2 else "student")
        if isinstance(side, dict):
            side["model"] = model


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3), command=st.sampled_from(["validate", "train"]))
def test_mutated_quickstart(mutations, command):
    doc = copy.deepcopy(QUICKSTART)
    for m in mutations:
        _mutate(doc, *m)
    check(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), command)


@FUZZ
@given(sets=overrides, command=st.sampled_from(["validate", "train"]))
def test_random_overrides(sets, command):
    check(yaml.safe_dump(QUICKSTART, sort_keys=False), command, sets)


def test_unmutated_quickstart_resolves():
    """The fuzz base itself is valid: mutations start from a spec that exits 0."""
    assert check(yaml.safe_dump(QUICKSTART, sort_keys=False)) == 0
