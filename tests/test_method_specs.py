"""specs/methods/: `kdgraph validate` passes on every shipped method recipe, and each header cites its paper.

A recipe that reads the full Fashion-MNIST validates against idx files written from the embedded subset when the
Debian copy is absent (`data.root`), so the check runs on any machine. The second step of the assistant chain names
the first step's export; it validates against a freshly initialised assistant saved where a run would write one.
"""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from kdgraph.cli.main import main
from kdgraph.data.fashion_mnist_files import DEBIAN_DIR
from kdgraph.models import create_model
from kdgraph.spec import load_spec

METHODS = Path(__file__).resolve().parents[1] / "specs" / "methods"
SPECS = sorted(METHODS.glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_kdgraph_validate_passes(path, tmp_path, fmnist_subset):
    spec = load_spec(path)
    overrides = []
    if spec.data.source == "full" and not (Path(DEBIAN_DIR) / "t10k-labels-idx1-ubyte").exists() \
            and not (Path(DEBIAN_DIR) / "t10k-labels-idx1-ubyte.gz").exists():
        overrides.append(f"data.root={fmnist_subset(tmp_path, 1024, 256)}")
    if str(getattr(spec.teacher, "weights", "")).startswith("runs/"):  # a chain's second step
        assistant = create_model(spec.teacher.model, spec.teacher.kwargs)
        weights = tmp_path / "assistant.safetensors"
        save_file({k: v.contiguous() for k, v in assistant.state_dict().items()}, str(weights))
        overrides.append(f"teacher.weights={weights}")
    result = CliRunner().invoke(main, ["validate", str(path), *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    header = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert re.search(r"\b(19|20)\d\d\b", header), "the header cites the paper (authors, venue, year)"
