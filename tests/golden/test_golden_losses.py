"""Golden per-step losses: a refactor changes no numbers (issue #30).

The first 20 steps of six runs, in float64 on the CPU, every loss term of every step, recorded on main before the
architecture refactor (commit c7465ce + the recorder) and compared within 1e-9:

- the quickstart (logit KD + a whole-map MSE pair through an auto projector);
- the projector recipe (GAP, linear projector, BatchNorm without affine, log-sum, KL at T = 1);
- the quickstart replayed from a teacher store (`kdgraph teach`, whole maps, resized-crop-flip and mixup);
- three zoo specs: DKD (a logit loss), CRD (a memory bank and negatives drawn from a resumable stream) and ReviewKD
  (four taps per model, attention-based fusion modules).

Record again (only when a change is *meant* to change numbers, and say so in the commit):
``KDGRAPH_RECORD_GOLDEN=1 python3 -m pytest tests/golden -q``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("losses.json")
STEPS = 20
TOL = 1e-9
COMMON = ["data.source=embedded", f"data.train_subset={STEPS * 32}", "data.test_subset=64", "data.batch_size=32",
          "data.drop_last=true", "train.epochs=1", "train.baseline=false", "runtime.precision=fp64",
          "runtime.device=cpu", "runtime.threads=1", "runtime.compile=off"]
STORE_VIEWS = ["data.augment=resized-crop-flip", "data.mix=mixup"]
RUNS = {
    "quickstart": ("specs/quickstart.yaml", []),
    "projector": ("specs/methods/projector.yaml", []),
    "store": ("specs/quickstart.yaml", STORE_VIEWS),
    "dkd": ("specs/zoo/dkd.yaml", []),
    "crd": ("specs/zoo/crd.yaml", ["distill.pairs[0].loss.num_negatives=256"]),
    "reviewkd": ("specs/zoo/reviewkd.yaml", []),
}


def _spec(name: str, extra: list[str] = ()):
    from kdgraph.spec import load_spec

    path, overrides = RUNS[name]
    return load_spec(ROOT / path, [*COMMON, *overrides, *extra])


def per_step_losses(spec) -> list[dict[str, float]]:
    """Every term of the first ``STEPS`` steps of epoch 0, as the trainer computes them (before each update)."""
    from kdgraph.plan import resolve_plan
    from kdgraph.runtime import seed_everything
    from kdgraph.train import Trainer

    seed_everything(spec.runtime.seed)
    trainer = Trainer(resolve_plan(spec))
    trainer.cache_teachers()
    trainer.enter_epoch(0)
    trainer.graph.train()
    trainer.loader.set_epoch(0)
    rows = []
    for x, y, index, host in trainer.batches(0):
        values = trainer.train_batch(x, y, index, host)
        assert values is not None, "a golden run must not skip a step"
        rows.append({k: float(v) for k, v in values.items() if k != "correct"})
        if len(rows) == STEPS:
            break
    return rows


def run(name: str, tmp_path: Path) -> list[dict[str, float]]:
    if name != "store":
        return per_step_losses(_spec(name))
    from kdgraph.teach import teach

    store = tmp_path / "store"
    teach(_spec(name), out=store, views=1, full_maps=True, quiet=True)
    return per_step_losses(_spec(name, [f"teacher.store={store}"]))


@pytest.mark.parametrize("name", list(RUNS))
def test_per_step_losses_match_the_golden_record(name, tmp_path):
    rows = run(name, tmp_path)
    assert len(rows) == STEPS
    if os.environ.get("KDGRAPH_RECORD_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = rows
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    golden = json.loads(GOLDEN.read_text())[name]
    assert [sorted(r) for r in rows] == [sorted(r) for r in golden], "the terms of a step changed"
    for step, (row, want) in enumerate(zip(rows, golden)):
        for key, value in want.items():
            assert abs(row[key] - value) <= TOL, f"{name} step {step} {key}: {row[key]!r} != golden {value!r}"
    assert len({round(r["total"], 6) for r in rows}) > STEPS // 2, "the loss moves"
