"""Resuming redoes nothing that finished, says when there is nothing to resume, and an interrupted or failed start
leaves no half-made run directory behind (while anything that existed before is kept)."""

import io

from rich.console import Console

from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.train.progress import Reporter


def listening_reporter() -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(console=Console(file=out, width=400, highlight=False)), out


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, tiny_doc):
    tiny_doc["train"]["epochs"] = 1
    tiny_doc["output"] = str(tmp_path / "never-ran")
    reporter, out = listening_reporter()
    train(spec_from_dict(tiny_doc), resume=True, reporter=reporter)
    assert f"warning: no checkpoint in {tmp_path / 'never-ran'}: starting from scratch" in out.getvalue()
