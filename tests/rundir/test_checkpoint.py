import os
import stat

import pytest
import torch

from kdgraph.errors import KdgraphError
from kdgraph.files import atomic_write_text, save_tensors


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


def test_a_checkpoint_with_index_keyed_adapters_resumes_into_label_keyed_ones(tmp_path):
    """Checkpoints written before adapters were keyed by term label (``adapters.student.0.*``) still load."""
    from torch import nn

    from kdgraph.graph.terms import Term, TermKind, legacy_adapter_renames
    from kdgraph.rundir.checkpoint import load_checkpoint, save_checkpoint

    old = {"adapters": nn.ModuleDict({"student": nn.ModuleDict({"0": nn.Linear(2, 3), "head1": nn.Linear(3, 1)})})}
    opt = torch.optim.SGD(old["adapters"].parameters(), lr=0.1)
    path = save_checkpoint(tmp_path, "ckpt-e0001-s000000", old, opt, {"epoch": 1, "step_in_epoch": 0})
    new = {"adapters": nn.ModuleDict({"student": nn.ModuleDict({"pair:a_1->b": nn.Linear(2, 3),
                                                                 "head:c": nn.Linear(3, 1)})})}
    terms = [Term("pair:a.1->b", TermKind.PAIR, 1.0, index=0, adapter="pair:a_1->b"),
             Term("head:c/ce", TermKind.HEAD_CE, 1.0, index=1, adapter="head:c")]
    renames = legacy_adapter_renames(terms)
    assert renames["adapters.student.0."] == "adapters.student.pair:a_1->b."
    load_checkpoint(path, new, torch.optim.SGD(new["adapters"].parameters(), lr=0.1), renames=renames)
    for a, b in zip(old["adapters"].parameters(), new["adapters"].parameters()):
        assert torch.equal(a, b)
