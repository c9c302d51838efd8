"""Starting data-parallel training: torchrun's environment checked against runtime.distributed (errors name the
spec key and what to change), and ``kdgraph train --nproc N`` re-executing itself under torchrun."""

import os

import pytest
import torch
from click.testing import CliRunner

from kdgraph.cli.main import main
from kdgraph.errors import KdgraphError
from kdgraph.spec import spec_from_dict
from kdgraph.session.distributed import LOCAL
from kdgraph.session.launch import TORCHRUN_VARS, start_distributed, torchrun_argv


# -- the environment checks -------------------------------------------------------------------------------------------
def spec(**runtime):
    doc = {"student": {"model": "kdgraph:fmnist_cnn"}, "data": {"batch_size": 32}, "runtime": runtime}
    return spec_from_dict(doc)


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def torchrun3(monkeypatch):
    """This process looks like rank 0 of 3 started by torchrun (no process group is ever joined here)."""
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="3").items():
        monkeypatch.setenv(name, value)


def test_auto_is_one_process_outside_torchrun(no_torchrun):
    assert start_distributed(spec()) is LOCAL
    assert start_distributed(spec(distributed="off", sync_bn=True)) is LOCAL


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ddp_outside_torchrun_says_how_to_launch(no_torchrun, mode):
    with pytest.raises(KdgraphError, match="torchrun --nproc-per-node N -m kdgraph train SPEC") as err:
        start_distributed(spec(distributed=mode))
    assert err.value.key == "runtime.distributed" and "--nproc N" in str(err.value)


def test_off_under_torchrun_is_refused(torchrun3):
    with pytest.raises(KdgraphError, match="3 processes started by torchrun") as err:
        start_distributed(spec(distributed="off"))
    assert err.value.key == "runtime.distributed"


def test_global_batch_must_divide_among_processes(torchrun3):
    with pytest.raises(KdgraphError, match="divisible by the 3 processes.*use 30 or 33") as err:
        start_distributed(spec(device="cpu"))
    assert err.value.key == "data.batch_size"
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpus(monkeypatch):
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KdgraphError, match="no CUDA GPU.*runtime.device: cpu") as err:
        start_distributed(spec(distributed="ddp", device="cuda"))
    assert err.value.key == "runtime.device"


def test_sync_bn_on_cpu_is_refused(monkeypatch):
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KdgraphError, match="SyncBatchNorm needs CUDA") as err:
        start_distributed(spec(device="cpu", sync_bn=True))
    assert err.value.key == "runtime.sync_bn"
    assert not torch.distributed.is_initialized()


# -- the CLI launcher -------------------------------------------------------------------------------------------------
class Launched(Exception):
    pass


def test_nproc_execs_torchrun(tmp_path, monkeypatch, no_torchrun):
    calls = []

    def fake_execv(path, argv):
        calls.append(argv)
        raise Launched

    monkeypatch.setattr(os, "execv", fake_execv)
    path = tmp_path / "s.yaml"
    path.write_text("student: {model: 'kdgraph:fmnist_cnn'}\ndata: {batch_size: 64}\n")
    result = CliRunner().invoke(main, ["--debug", "train", str(path), "--nproc", "2", "--set", "train.epochs=1",
                                       "--resume", "-q"])
    assert isinstance(result.exception, Launched), result.output
    assert calls == [torchrun_argv(2, ["--debug", "train", str(path), "--set", "train.epochs=1", "--resume",
                                       "--quiet"])]
    assert calls[0][1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "kdgraph"]


@pytest.mark.parametrize("mode, launched", [("ddp", True), ("fsdp", True), ("auto", False), ("off", False)])
def test_nproc_1_starts_torchrun_only_for_ddp_or_fsdp(tmp_path, monkeypatch, no_torchrun, mode, launched):
    """``--nproc 1`` with ddp/fsdp asked for is a 1-process group under torchrun (DDP's overhead on one device);
    otherwise one process is one process, trained here."""
    calls = []

    def fake_execv(path, argv):
        calls.append(argv)
        raise Launched

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setattr("kdgraph.train.train", lambda *a, **k: (_ for _ in ()).throw(Launched("trained here")))
    path = tmp_path / "s.yaml"
    path.write_text(f"student: {{model: 'kdgraph:fmnist_cnn'}}\nruntime: {{distributed: {mode}}}\n")
    result = CliRunner().invoke(main, ["train", str(path), "--nproc", "1"])
    assert isinstance(result.exception, Launched), result.output
    assert calls == ([torchrun_argv(1, ["train", str(path)])] if launched else [])


@pytest.mark.parametrize("extra, message", [
    # the bad values came from --set, not from the file's line 2 (data: {batch_size: 64})
    (["--set", "data.batch_size=33"], "data.batch_size (--set data.batch_size=33): data.batch_size 33 is the global "
                                      "batch"),
    (["--set", "runtime.distributed=off"], "runtime.distributed (--set runtime.distributed=off): --nproc 2 needs data "
                                           "parallelism"),
])
def test_nproc_checks_before_launching(tmp_path, monkeypatch, no_torchrun, extra, message):
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("launched"))
    path = tmp_path / "s.yaml"
    path.write_text("student: {model: 'kdgraph:fmnist_cnn'}\ndata: {batch_size: 64}\n")
    result = CliRunner().invoke(main, ["train", str(path), "--nproc", "2", *extra])
    assert result.exit_code == 2 and message in result.output, result.output


def test_fsdp_needs_fully_shard(monkeypatch):
    """An older torch without FSDP2 gets a spec error with the alternative, not an ImportError from deep inside."""
    import torch.distributed.fsdp as fsdp

    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delattr(fsdp, "fully_shard")
    with pytest.raises(KdgraphError, match="fsdp needs FSDP2.*runtime.distributed: ddp") as err:
        start_distributed(spec(distributed="fsdp", device="cpu"))
    assert err.value.key == "runtime.distributed"
    assert not torch.distributed.is_initialized()


def test_a_partial_last_batch_cannot_be_shared_among_processes(torchrun3):
    doc = {"student": {"model": "kdgraph:fmnist_cnn"}, "data": {"batch_size": 33, "drop_last": False},
           "runtime": {"device": "cpu"}}
    with pytest.raises(KdgraphError, match="cannot share.*data.drop_last: true") as err:
        start_distributed(spec_from_dict(doc))
    assert err.value.key == "data.drop_last"
