"""InDistill's assistant chain: the shipped two-step specs run end to end, the second using the first's export."""

from pathlib import Path

import torch

from kdgraph.spec import load_spec
from kdgraph.train import train

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.source=embedded", "data.train_subset=128", "data.test_subset=64", "data.batch_size=32"]


def test_teacher_assistant_student_chain(tmp_path):
    assistant_dir = tmp_path / "assistant"
    first = load_spec(ROOT / "specs/methods/indistill_assistant.yaml", [*SMALL, f"output={assistant_dir}"])
    train(first, quiet=True)
    second = load_spec(ROOT / "specs/methods/indistill_from_assistant.yaml",
                       [*SMALL, f"output={tmp_path / 'student'}",
                        f"teacher.weights={assistant_dir / 'student.safetensors'}"])
    result = train(second, quiet=True)
    masks = (tmp_path / "student" / "prune_masks.json").read_text()
    assert "pair:conv1" in masks and "pair:conv3" in masks
    assert [r["stage"] for r in result.metrics] == ["conv1", "conv2", "conv3", "embedding", "embedding"]
    assert all(torch.isfinite(p).all() for p in result.student.parameters())
