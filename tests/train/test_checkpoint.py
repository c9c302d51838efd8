import os
import stat

import pytest
import torch

from kdgraph.errors import KdgraphError
from kdgraph.train.checkpoint import atomic_write_text, save_tensors


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_safetensors_files_get_the_same_permissions_as_json_files(tmp_path, umask_022):
    # safetensors' save_file replaces its target with a fresh 0600 file; the final file must follow the umask
    save_tensors(tmp_path / "student.safetensors", {"w": torch.zeros(2)})
    atomic_write_text(tmp_path / "summary.json", "{}")
    assert stat.S_IMODE((tmp_path / "student.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("write", [lambda p: save_tensors(p, {"w": torch.zeros(2)}), lambda p: atomic_write_text(p, "x")])
def test_writing_onto_a_folder_or_under_a_file_is_a_user_error(tmp_path, write):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(KdgraphError, match="cannot write .*folder.*directory"):
        write(tmp_path / "folder")
    with pytest.raises(KdgraphError, match="cannot write .*a_file.*is a file, not a folder"):
        write(tmp_path / "a_file" / "x.out")
    assert (tmp_path / "a_file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]  # no temporary file left behind
    assert not any((tmp_path / "folder").iterdir())
