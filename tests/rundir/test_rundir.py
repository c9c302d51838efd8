import pytest

from kdgraph.errors import RunDirError
from kdgraph.rundir.rundir import RunDir


def test_a_run_dir_under_a_file_is_refused_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"cannot create the run directory .*notes\.txt/run.*Not a directory") as err:
        RunDir(tmp_path / "notes.txt" / "run").prepare({"name": "x"}, overwrite=False, resume=False)
    assert err.value.key == "output"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_dir_that_cannot_be_created_is_refused_clearly(tmp_path, monkeypatch):
    def denied(self, *args, **kwargs):  # what a read-only parent gives (root ignores chmod, so it is simulated)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", denied)
    with pytest.raises(RunDirError, match=r"cannot create the run directory .*run'.*Permission denied"):
        RunDir(tmp_path / "run").prepare({"name": "x"}, overwrite=False, resume=False)
