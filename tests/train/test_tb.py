"""TensorBoard logging: metric rows become scalars; a missing tensorboard is a clear, catchable error."""

import sys

import pytest

from kdgraph.errors import KdgraphError
from kdgraph.train.tb import TensorBoardLogger, TensorBoardMissingError


def test_rows_become_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [{"epoch": 1, "loss/total": 2.0, "loss/pair:block3->layer3": 0.5, "val_top1": 0.25, "lr": 0.1,
             "note": "text", "flag": True, "missing": None},
            {"epoch": 2, "loss/total": 1.5, "loss/pair:block3->layer3": 0.25, "val_top1": 0.5, "lr": 0.05}]
    with TensorBoardLogger(tmp_path / "tb") as logger:
        for row in rows:
            logger.log(row, step=row["epoch"])
    logger.close()  # closing twice is harmless
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"loss/total", "loss/pair:block3->layer3", "val_top1", "lr"}
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [(1, 2.0), (2, 1.5)]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1, 0.05])
    with pytest.raises(RuntimeError, match="after close"):
        logger.log({"lr": 1.0}, step=3)


def test_missing_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(TensorBoardMissingError):
        TensorBoardLogger.check_available()  # checked before a run directory is created
    with pytest.raises(TensorBoardMissingError, match="pip install tensorboard") as info:
        TensorBoardLogger(tmp_path / "tb")
    assert isinstance(info.value, ImportError) and isinstance(info.value, KdgraphError)
    assert info.value.key == "runtime.log"
    assert not (tmp_path / "tb").exists()
