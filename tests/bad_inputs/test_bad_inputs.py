"""The bad-input corpus (cases.yaml) run through the CLI: every case must end with exit code 2, one message naming
the spec key (with its YAML line when the key comes from the file) and the problem, no traceback, and not one
file of the user's changed (sizes, mtimes and hashes compared before/after)."""

import io
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save

from kdgraph.models.zoo import FmnistCNN, FmnistResNet

HERE = Path(__file__).resolve().parent
CORPUS = yaml.safe_load((HERE / "cases.yaml").read_text())
BASES: dict[str, str] = CORPUS["bases"]
CASES: list[dict] = CORPUS["cases"]


class _Evil:
    """Unpickling this creates the file PWNED: if it appears, something ran pickle on untrusted input."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _safetensors(model: torch.nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _pickle_pt() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": _Evil()}, buf)
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


# Fixture files a case may ask for under `files: {relative/path: kind}`.
MAKERS = {
    "garbage": lambda: b"\x93NUMPY not what you think \x00\x01\x02" * 8,
    "empty": lambda: b"",
    "cnn-safetensors": lambda: _safetensors(FmnistCNN()),
    "resnet-safetensors": lambda: _safetensors(FmnistResNet()),
    "truncated-safetensors": lambda: _safetensors(FmnistCNN())[:1000],
    "pickle-pt": _pickle_pt,
    "pickle-evil": lambda: pickle.dumps(_Evil(), protocol=2),
    "png": _png,
    "latin1-yaml": lambda: "name: caf\xe9\nstudent: {model: 'kdgraph:fmnist_cnn'}\n".encode("latin-1"),
}


def _make_files(root: Path, files: dict[str, str]) -> None:
    for rel, kind in (files or {}).items():
        path = root / rel
        if kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind.startswith("text:"):
            path.write_text(kind[5:])
        else:
            path.write_bytes(MAKERS[kind]())


def spec_text(case: dict) -> str:
    if "spec" in case:
        return case["spec"]
    text = BASES[case.get("base", "small")]
    for old, new in case.get("replace", []):
        assert old in text, f"{case['id']}: {old!r} is not in base {case.get('base', 'small')!r}"
        text = text.replace(old, new, 1)
    return text


def command(case: dict) -> list[str]:
    cmd, *extra = case.get("args", ["validate"])
    spec = case.get("spec_path", "spec.yaml")
    sets = [a for item in case.get("set", []) for a in ("--set", item)]
    return [cmd, spec, *extra, *sets]


def _param(case: dict):
    marks = []
    if case.get("xfail"):
        marks.append(pytest.mark.xfail(strict=True, reason=case["xfail"]))
    if case.get("needs") == "no-cuda" and torch.cuda.is_available():
        marks.append(pytest.mark.skip(reason="a CUDA GPU is present"))
    return pytest.param(case, id=case["id"], marks=marks)


def test_corpus_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 40
    for case in CASES:
        assert case.get("expect_key") and case.get("expect_words"), case["id"]
        assert case.get("category"), case["id"]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case, workdir, cli, snap):
    snapshot, diff = snap
    if "spec_path" not in case:
        (workdir / "spec.yaml").write_text(spec_text(case), encoding="utf-8")
    _make_files(workdir, case.get("files"))
    before = snapshot(workdir)

    code, out, exc = cli(command(case))

    assert exc is None, f"uncaught {type(exc).__name__}: {exc}\n{out}"
    assert "Traceback" not in out, out
    assert code == case.get("expect_exit", 2), out
    key = case["expect_key"]
    assert key in out, f"key {key!r} not in:\n{out}"
    line = case.get("expect_line")
    if line is not None:
        where = f"{key} (line {line})" if not key.endswith((".yaml", ".yml")) else f"line {line}"
        assert where in out, f"{where!r} not in:\n{out}"
    low = out.lower()
    for word in case["expect_words"]:
        assert str(word).lower() in low, f"{word!r} not in:\n{out}"
    assert diff(before, snapshot(workdir)) == [], "the command changed files in the user's folder"
    assert not (workdir / "PWNED").exists()
