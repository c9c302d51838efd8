import pytest
import torch

from kdgraph.errors import KdgraphError
from kdgraph.spec import spec_from_dict
from kdgraph.spec.schema import RuntimeSpec
from kdgraph.train import train
from kdgraph.runtime import resolve_runtime

TINY = {
    "teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
    "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
    "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
             "test_subset": 32},
    "distill": {"logits": {"temperature": 4.0, "weight": 0.9}, "pairs": [{"teacher": "layer3", "student": "block3"}]},
    "train": {"epochs": 1},
}


def test_auto_policy_on_cpu():
    rt = resolve_runtime(RuntimeSpec(), conv_net=True)
    if not torch.cuda.is_available():
        assert rt.device.type == "cpu" and rt.dtype is None and rt.compile_mode is None and rt.channels_last
        assert resolve_runtime(RuntimeSpec(), conv_net=False).channels_last is False
    assert resolve_runtime(RuntimeSpec(precision="bf16", compile="default", channels_last="off")).dtype is torch.bfloat16
    assert resolve_runtime(RuntimeSpec(compile="reduce-overhead")).compile_mode == "reduce-overhead"
    assert resolve_runtime(RuntimeSpec(compile="off")).compile_mode is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors")
def test_auto_policy_on_a_cuda_machine(monkeypatch):
    """What auto resolves to where CUDA exists (CUDA itself is not needed to decide it): bf16 and CUDA graphs, but
    eager with precision fp64, the reference check (a compiled float64 backward crashed on an H200, torch 2.11)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rt = resolve_runtime(RuntimeSpec())
    assert (rt.device.type, rt.dtype, rt.compile_mode) == ("cuda", torch.bfloat16, "reduce-overhead")
    rt = resolve_runtime(RuntimeSpec(precision="fp64"))
    assert (rt.device.type, rt.float64, rt.compile_mode) == ("cuda", True, None)
    assert resolve_runtime(RuntimeSpec(precision="fp64", compile="reduce-overhead")).compile_mode == "reduce-overhead"


def test_gpu_only_settings_fail_clearly_on_cpu():
    with pytest.raises(KdgraphError, match="runtime.device.*no CUDA GPU"):
        resolve_runtime(RuntimeSpec(device="cuda"))
    with pytest.raises(KdgraphError, match="fp16 needs a CUDA device"):
        resolve_runtime(RuntimeSpec(precision="fp16"))


def test_forced_compile_failure_falls_back_with_one_warning(monkeypatch, capsys):
    def broken_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError("backend exploded on purpose")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    spec = spec_from_dict(dict(TINY, runtime={"compile": "default"}))
    result = train(spec, write=False)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "backend exploded on purpose" in err
    assert len(result.metrics) == 1


def test_bf16_autocast_step_close_to_fp32():
    rows = {}
    for precision in ("fp32", "bf16"):
        spec = spec_from_dict(dict(TINY, runtime={"precision": precision, "seed": 1}, train={"epochs": 1}))
        rows[precision] = train(spec, write=False, quiet=True).metrics[0]
    for key in ("loss/ce", "loss/logits", "loss/pair:block3->layer3"):
        assert rows["bf16"][key] == pytest.approx(rows["fp32"][key], rel=0.1), key


@pytest.mark.slow
def test_compiled_step_matches_eager_losses_and_gradients():
    """torch.compile of the whole graph computes the same terms and gradients as eager (first compile ~40 s)."""
    from kdgraph.graph import build_graph
    from kdgraph.models import create_model

    spec = spec_from_dict(TINY)
    torch.manual_seed(0)
    student = create_model(spec.student.model, spec.student.kwargs)
    teacher = create_model(spec.teacher.model, spec.teacher.kwargs)
    graph = build_graph(spec, student, teacher, (1, 28, 28)).graph.train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    eager = graph(x, y)
    eager.total.backward()
    grads = {n: p.grad.clone() for n, p in graph.named_parameters()}
    graph.zero_grad(set_to_none=True)
    compiled = torch.compile(graph)(x, y)
    compiled.total.backward()
    for key, value in eager.terms.items():
        torch.testing.assert_close(compiled.terms[key], value, rtol=1e-4, atol=1e-5)
    for name, p in graph.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-5)


def test_the_compiled_step_is_one_graph_under_autocast(monkeypatch):
    """No graph break in the distillation graph under bf16 autocast: the loss terms switch autocast off without
    asking torch whether autocast exists (a builtin torch.compile 2.11 cannot trace; on the first GPU run it split the
    step into three CUDA graphs instead of two)."""
    from kdgraph.graph import build_graph
    from kdgraph.models import create_model

    spec = spec_from_dict(TINY)
    student = create_model(spec.student.model, spec.student.kwargs)
    teacher = create_model(spec.teacher.model, spec.teacher.kwargs)
    graph = build_graph(spec, student, teacher, (1, 28, 28)).graph.train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10

    def refuse(device_type):
        raise AssertionError("torch.amp.is_autocast_available called inside the step")

    monkeypatch.setattr(torch.amp, "is_autocast_available", refuse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(graph)(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_tensorboard_sink_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    doc = dict(TINY, runtime={"log": ["jsonl", "tensorboard"]}, output=str(tmp_path / "run"))
    train(spec_from_dict(doc), quiet=True)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_fp64_trains_in_float64_end_to_end(tmp_path):
    """precision fp64: models, adapters, batches and every loss term in float64 (the reference check relies on it)."""
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    doc = {"teacher": {"model": "kdgraph:fmnist_resnet", "kwargs": {"widths": [4, 8, 8], "blocks": [1, 1, 1]}},
           "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16]}},
           "data": {"dataset": "fashion-mnist", "source": "embedded", "batch_size": 32, "train_subset": 64,
                    "test_subset": 32, "augment": "crop-flip"},
           "distill": {"logits": {"temperature": 4.0}, "pairs": [{"teacher": "layer3", "student": "block3"}]},
           "train": {"epochs": 1}, "runtime": {"precision": "fp64"}}
    result = train(spec_from_dict(doc), write=False, quiet=True)
    assert {p.dtype for p in result.student.parameters()} == {torch.float64}
    graph = result.plan.graph
    assert {p.dtype for p in graph.student_adapters.parameters()} == {torch.float64}
    device = result.plan.runtime.device  # the GPU under runtime auto, where there is one
    out = graph(torch.zeros(2, 1, 28, 28, dtype=torch.float64, device=device), torch.tensor([0, 1], device=device))
    assert out.total.dtype == torch.float64 and {v.dtype for v in out.terms.values()} == {torch.float64}
    assert 0 <= result.metrics[-1]["val_top1"] <= 1
