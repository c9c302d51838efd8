"""``teacher.precision``: a frozen teacher kept in bf16 (half the memory), folded in float32 first, returning
float32 outputs; refused where it cannot run."""

import pytest
import torch

from kdgraph.errors import KdgraphError
from kdgraph.plan import resolve_plan
from kdgraph.spec import Spec


def spec(teacher_precision: str, **runtime) -> Spec:
    return Spec.model_validate({
        "teacher": {"model": "kdgraph:fmnist_resnet", "weights": "builtin", "precision": teacher_precision},
        "student": {"model": "kdgraph:fmnist_cnn"}, "distill": {"logits": {}, "pairs": [
            {"teacher": "layer3", "student": "block3"}]},
        "data": {"source": "embedded", "batch_size": 32}, "runtime": {"device": "cpu", **runtime}})


def test_bf16_teacher_halves_the_memory_and_keeps_float32_outputs():
    whole, half = (resolve_plan(spec(p)).graph.teachers["teacher"] for p in ("fp32", "bf16"))
    size = lambda m: sum(t.numel() * t.element_size() for t in m.parameters())  # noqa: E731
    assert size(half.module) * 2 == size(whole.module)
    # folded in float32, then cast: the weights are the float32 fold rounded once
    for (name, a), (_, b) in zip(whole.module.named_parameters(), half.module.named_parameters()):
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b), name
    x = torch.randn(16, 1, 28, 28)
    want, got = whole(x), half(x)
    for key in want:
        assert got[key].dtype == torch.float32
        scale = float(want[key].abs().max())
        assert float((got[key] - want[key]).abs().max()) <= 0.05 * scale, key
    assert (got["output"].argmax(1) == want["output"].argmax(1)).float().mean() >= 0.9


def test_half_teacher_is_refused_with_fp64_and_fp16_on_cpu():
    with pytest.raises(KdgraphError, match="teacher.precision bf16 contradicts runtime.precision fp64"):
        resolve_plan(spec("bf16", precision="fp64"))
    with pytest.raises(KdgraphError, match="teacher.precision fp16 needs a CUDA device"):
        resolve_plan(spec("fp16"))
