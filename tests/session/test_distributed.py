"""Data-parallel training: sharded loaders and augmentation, and (slow) real 2-process gloo runs under torchrun that
end where a 1-process run with the same global batch ends. The environment checks and the launcher: test_launch.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from kdgraph.data import make_loader, random_crop_flip
from kdgraph.data.loader import shard_order
from kdgraph.session.distributed import DistContext
from kdgraph.session.launch import TORCHRUN_VARS, torchrun_argv

ROOT = Path(__file__).resolve().parents[2]


# -- data: every rank takes a disjoint slice of the same global batch ------------------------------------------------
def test_shard_order_splits_every_global_batch():
    order = torch.tensor([7, 3, 9, 0, 1, 8, 2, 6, 5, 4])
    assert shard_order(order, 4, 0, 2).tolist() == [7, 3, 1, 8]
    assert shard_order(order, 4, 1, 2).tolist() == [9, 0, 2, 6]  # the partial batch [5, 4] is dropped


@pytest.mark.parametrize("fast", [True, False], ids=["TensorBatchLoader", "SeededDataLoader"])
def test_sharded_loaders_together_yield_the_global_batches(fast):
    data = TensorDataset(torch.arange(50).float()[:, None], torch.arange(50))
    whole = make_loader(data, 12, train=True, seed=3, drop_last=True, fast=fast)
    shards = [make_loader(data, 12, train=True, seed=3, drop_last=True, fast=fast, shard=(r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [len(whole)] * 3
    for loader in (whole, *shards):
        loader.set_epoch(2)
        loader.skip(1)
    parts = [list(s) for s in shards]
    for b, (x, y) in enumerate(whole):
        assert [len(p[b][1]) for p in parts] == [4, 4, 4]
        assert torch.equal(torch.cat([p[b][1] for p in parts]), y)
    assert len(parts[0]) == len(whole) - 1


def test_sharded_loader_needs_a_divisible_batch():
    data = TensorDataset(torch.zeros(20, 1), torch.zeros(20))
    with pytest.raises(Exception, match="divisible"):
        make_loader(data, 10, train=True, seed=0, drop_last=True, shard=(0, 3))


def test_crop_flip_shards_equal_one_unsharded_call():
    x = torch.randn(8, 1, 12, 12)
    whole = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5))
    parts = []
    for rank in range(2):
        gen = torch.Generator().manual_seed(5)  # every rank holds the same generator state
        parts.append(random_crop_flip(x[4 * rank:4 * rank + 4], padding=2, generator=gen, draw=(4 * rank, 8)))
    assert torch.equal(torch.cat(parts), whole)


def test_eval_shards_count_every_sample_once():
    data = TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))
    seen = []
    for rank in range(3):
        shard, valid = DistContext(mode="ddp", rank=rank, world=3).eval_shard(data)
        assert len(shard) == 4  # padded: the same number of forwards on every rank
        seen += shard.tensors[1][:valid].tolist()
    assert seen == list(range(10))


# -- real runs: 2 gloo processes under torchrun against 1 process ------------------------------------------------------
STUDENT = '''\
import torch
from torch import nn


class NoBNStudent(nn.Module):
    """Conv-ReLU blocks without BatchNorm: a step's result does not depend on how its batch is split."""

    def __init__(self, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block3(self.block2(self.block1(x)))), 1))
'''

SPEC = """\
name: dist
teacher: {model: "kdgraph:fmnist_resnet", kwargs: {widths: [8, 16, 16], blocks: [1, 1, 1]}}
student: {model: "python:dist_student:NoBNStudent"}
data: {dataset: fashion-mnist, source: embedded, batch_size: 32, train_subset: 256, test_subset: 45, augment: crop-flip}
distill:
  logits: {temperature: 4.0, weight: 0.9}
  pairs: [{teacher: layer3, student: block3}]
train: {epochs: 2, max_steps_per_epoch: 4, optimizer: {name: sgd, lr: 0.1, momentum: 0.9}}
runtime: {seed: 1}
output: {dir: OUT, keep: 10, checkpoint_every: 2}
"""


def kdgraph(work: Path, *args: str, nproc: int = 1) -> str:
    """Run ``kdgraph train`` (under torchrun when ``nproc`` > 1) and return its output; fails on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(work)]), OMP_NUM_THREADS="1")
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    prefix = torchrun_argv(nproc, []) if nproc > 1 else [sys.executable, "-m", "kdgraph"]
    proc = subprocess.run([*prefix, "train", str(work / "spec.yaml"), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The module and spec, and the 1-process reference run (``ref``)."""
    work = tmp_path_factory.mktemp("dist")
    (work / "dist_student.py").write_text(STUDENT)
    (work / "spec.yaml").write_text(SPEC.replace("OUT", str(work / "ref")))
    kdgraph(work, "--quiet")
    return work


def assert_same_run(work: Path, out: str, resumed: bool = False, ref: str = "ref") -> None:
    """Same student and adapters as the run in ``ref`` (float tolerance: the all-reduce adds gradients in another
    order), same metrics (a resumed epoch's ``lr`` is the learning rate where it resumed)."""
    for name in ("student", "adapters"):
        want, got = (load_file(str(work / run / f"{name}.safetensors")) for run in (ref, out))
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    rows = [[json.loads(line) for line in (work / d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)]
    assert len(rows[0]) == len(rows[1]) == 2
    for want, got in zip(*rows):
        assert want.keys() == got.keys()
        for key, value in want.items():
            if key not in ("images_per_s", "time_s") and not (resumed and key == "lr" and want["epoch"] == 1):
                assert got[key] == pytest.approx(value, rel=1e-5), key


def resume_from_first_checkpoint(work: Path, source: str, target: str) -> None:
    """A copy of ``source`` cut back to its first checkpoint (epoch 1, step 2), metrics and exports removed."""
    shutil.copytree(work / source, work / target)
    for path in (work / target / "checkpoints").glob("ckpt-*"):
        if not path.name.startswith("ckpt-e0000-s000002."):
            path.unlink()
    for name in ("student.safetensors", "adapters.safetensors", "best.safetensors", "summary.json"):
        (work / target / name).unlink()
    (work / target / "metrics.jsonl").write_text("")


@pytest.mark.slow
def test_ddp_two_processes_equal_one_and_resume_in_one(work):
    """DDP over gloo, launched by ``kdgraph train --nproc 2``: each process takes 16 of the 32 images of every global
    batch. The student has no BatchNorm (per-shard batch statistics would make the runs differ; sync_bn needs CUDA),
    the teacher's BatchNorm is frozen in eval mode, and the crops of each shard are those of one process, so the
    2-process run must end where the 1-process run ends. Its mid-epoch checkpoint then resumes in 1 process."""
    kdgraph(work, "--quiet", "--nproc", "2", "--set", f"output.dir={work / 'ddp'}")
    assert_same_run(work, "ddp")
    assert (work / "ddp" / "spec.yaml").is_file() and not list(work.glob("ddp/**/*.tmp"))

    first = load_file(str(work / "ddp" / "checkpoints" / "ckpt-e0000-s000002.safetensors"))
    final = load_file(str(work / "ddp" / "student.safetensors"))
    assert max(float((first[f"student.{k}"] - v).abs().max()) for k, v in final.items()) > 1e-3  # it trained on

    resume_from_first_checkpoint(work, "ddp", "ddp_to_1")
    out = kdgraph(work, "--resume", "--set", f"output.dir={work / 'ddp_to_1'}")
    assert "resumed from ckpt-e0000-s000002.json (epoch 1, step 2)" in out
    assert_same_run(work, "ddp_to_1", resumed=True)


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_resume_a_one_process_checkpoint(work):
    """FSDP2 (fully_shard) over gloo: parameters and optimizer state are sharded, checkpoints gathered to full state
    dicts. Same setup as the DDP test; then the 1-process run's first checkpoint resumes with 2 FSDP processes."""
    kdgraph(work, "--quiet", "--set", f"output.dir={work / 'fsdp'}", "--set", "runtime.distributed=fsdp", nproc=2)
    assert_same_run(work, "fsdp")
    ckpt = load_file(str(work / "fsdp" / "checkpoints" / "ckpt-e0001-s000000.safetensors"))
    ref = load_file(str(work / "ref" / "checkpoints" / "ckpt-e0001-s000000.safetensors"))
    assert ckpt.keys() == ref.keys() and any(k.startswith("optim.") for k in ckpt)
    for key in ref:
        if not key.startswith("rng."):
            torch.testing.assert_close(ckpt[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)

    resume_from_first_checkpoint(work, "ref", "ref_to_fsdp")
    out = kdgraph(work, "--resume", "--set", f"output.dir={work / 'ref_to_fsdp'}", "--set",
                  "runtime.distributed=fsdp", nproc=2)
    assert "resumed from ckpt-e0000-s000002.json (epoch 1, step 2)" in out
    assert_same_run(work, "ref_to_fsdp", resumed=True)


@pytest.mark.slow
def test_ddp_processes_share_the_teacher_cache(work):
    """Without augmentation ``teacher.cache: auto`` caches the teacher's outputs. Under 2 processes each computes
    them for its half of the training set and the halves are gathered in data set order, so the run must end where
    a 1-process run that runs the teacher in every step ends."""
    plain = ("--set", "data.augment=none")
    kdgraph(work, "--quiet", *plain, "--set", "teacher.cache=none", "--set", f"output.dir={work / 'no_cache'}")
    out = kdgraph(work, *plain, "--set", f"output.dir={work / 'ddp_cache'}", nproc=2)
    assert "once over 256 training images (128 per process)" in " ".join(out.split())  # rich wraps lines
    assert_same_run(work, "ddp_cache", ref="no_cache")


SHARD_CHECK = '''\
import copy, json, sys
import torch
from kdgraph.plan import resolve_plan
from kdgraph.spec import load_spec
from kdgraph.session.launch import start_distributed

spec = load_spec(sys.argv[1], ["teacher.shard=fsdp", "runtime.distributed=ddp"] + sys.argv[3:])
dist = start_distributed(spec)
torch.manual_seed(0)
plan = resolve_plan(spec)
frozen = plan.graph.teachers["teacher"]
replica = copy.deepcopy(frozen)  # the whole teacher, as every rank holds it without sharding
x, _ = plan.data.test.get_batch(torch.arange(16))
want = replica(x)
assert dist.shard_teachers(plan.graph, {"teacher": "fsdp"}) == ["teacher"]
got = [frozen(x), frozen(x[:8])]  # twice: gathered for each forward, resharded after it
diff = max(max(float((got[0][k] - want[k]).abs().max()) for k in want),
           max(float((got[1][k] - want[k][:8]).abs().max()) for k in want))
size = lambda p: p.numel() * p.element_size()
local = sum(size(p.to_local()) if hasattr(p, "to_local") else size(p) for p in frozen.module.parameters())
whole = sum(size(p) for p in replica.module.parameters())
json.dump({"diff": diff, "local_bytes": local, "whole_bytes": whole, "keys": sorted(want)},
          open(f"{sys.argv[2]}/rank{dist.rank}.json", "w"))
dist.finish(plan.student)
'''


@pytest.mark.slow
def test_sharded_teacher_gives_the_replicated_teachers_outputs(work):
    """``teacher.shard: fsdp`` with 2 gloo processes: the teacher's parameters are split across the ranks (each
    holds about half), and its outputs for the same batch equal the whole teacher's within 1e-6, forward after
    forward. Then a whole training run with the sharded teacher ends where the replicated run ends."""
    (work / "shard_check.py").write_text(SHARD_CHECK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(work)]), OMP_NUM_THREADS="1")
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    argv = torchrun_argv(2, [])[:-2] + [str(work / "shard_check.py"), str(work / "spec.yaml"), str(work)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in range(2):
        report = json.loads((work / f"rank{rank}.json").read_text())
        assert report["keys"] == ["layer3", "output"]
        assert report["diff"] <= 1e-6, report
        assert report["local_bytes"] < 0.6 * report["whole_bytes"], report

    kdgraph(work, "--quiet", "--set", f"output.dir={work / 'teacher_fsdp'}", "--set", "teacher.shard=fsdp", nproc=2)
    assert_same_run(work, "teacher_fsdp")
