"""The CUDA path as a user meets it: ``runtime: auto`` on a GPU (bf16, compiled with CUDA graphs, fused optimizer,
channels_last), a run that trains, resumes and exports, and a compiled step that computes what the eager step does.
Skipped without a CUDA GPU (`benchmarks/gpu_session.sh first-light` runs them on one)."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kdgraph.models import create_model
from kdgraph.plan import resolve_plan
from kdgraph.spec import spec_from_dict
from kdgraph.train import Trainer, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_runtime_on_cuda_trains_resumes_and_exports(tiny_doc, tmp_path):
    """The default policy resolves to the GPU path, trains to finite metrics, resumes from a checkpoint and saves a
    student that gives the same logits on the CPU as on the GPU."""
    tiny_doc["output"] = str(tmp_path / "a" / "run")
    result = train(spec_from_dict(tiny_doc), quiet=True)
    rt = result.plan.runtime
    assert (rt.device.type, rt.precision, rt.compile_mode, rt.channels_last) == ("cuda", "bf16", "reduce-overhead",
                                                                                 True)
    assert [row["epoch"] for row in result.metrics] == [1, 2]
    for row in result.metrics:
        assert all(math.isfinite(v) for k, v in row.items() if k.startswith("loss/")), row
        assert 0.0 <= row["val_top1"] <= 1.0
    run = tmp_path / "a" / "run"
    state = load_file(run / "student.safetensors")
    student = create_model(tiny_doc["student"]["model"], tiny_doc["student"]["kwargs"])
    student.load_state_dict(state)
    x = torch.randn(8, 1, 28, 28)
    on_gpu = result.student.float().eval()(x.cuda()).cpu()
    torch.testing.assert_close(student.eval()(x), on_gpu, rtol=1e-3, atol=1e-3)

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "b" / "run" / "checkpoints").glob("ckpt-e0002-*"):
        path.unlink()
    tiny_doc["output"] = str(tmp_path / "b" / "run")
    resumed = train(spec_from_dict(tiny_doc), quiet=True, resume=True)
    assert [row["epoch"] for row in resumed.metrics] == [1, 2]
    for (key, a), b in zip(result.student.state_dict().items(), resumed.student.state_dict().values()):
        # CUDA's convolution backward is not bitwise deterministic: close, not equal (the CPU test asserts equality)
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-2, atol=1e-2, msg=key)


def _trainer(tiny_doc, compile_mode: str) -> Trainer:
    doc = dict(tiny_doc, runtime={"device": "cuda", "precision": "fp32", "compile": compile_mode, "seed": 0})
    torch.manual_seed(0)
    loop = Trainer(resolve_plan(spec_from_dict(doc)))
    loop.graph.train()
    return loop


def test_cuda_graph_step_matches_eager_step_and_its_values_stay_valid(tiny_doc, monkeypatch):
    """Three steps compiled with CUDA graphs give the eager steps' terms and weights; the values returned by the
    first step still hold after later replays (CUDA graphs reuse their output memory)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 on both sides
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager, graphed = _trainer(tiny_doc, "off"), _trainer(tiny_doc, "reduce-overhead")
    for a, b in zip(eager.student.state_dict().values(), graphed.student.state_dict().values()):
        assert torch.equal(a, b)  # the same initial weights
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 1, 28, 28, generator=g).cuda().contiguous(memory_format=torch.channels_last),
                torch.randint(10, (32,), generator=g).cuda()) for _ in range(3)]
    want = [eager.step(x, y) for x, y in batches]
    got = [graphed.step(x, y) for x, y in batches]
    for step, (w, v) in enumerate(zip(want, got)):
        for key in w:
            torch.testing.assert_close(v[key].float(), w[key].float(), rtol=1e-3, atol=1e-4,
                                       msg=f"step {step + 1} {key}")
    for (key, a), b in zip(eager.student.state_dict().items(), graphed.student.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-4, msg=key)
