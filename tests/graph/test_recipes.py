"""The method recipes' graphs, recomputed by hand from the plain models: the projector recipe's total, several
teachers each with its own head, and teachers reading the view they are given."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdgraph.graph import build_graph
from kdgraph.models import create_model
from kdgraph.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs" / "methods"


def _models(spec, *names):
    torch.manual_seed(0)
    return create_model(spec.student.model), {n: create_model(spec.teacher_specs[n].model) for n in names}


def _tap(model, name, x):
    """A module's output, read with a forward hook on the plain model (independent of kdgraph's extractors)."""
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.setdefault("v", o))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["v"]


def _bn(v, eps):
    v = v.double()
    return (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + eps)


def test_projector_recipe_total_is_ce_plus_2_logsum_plus_kl_t1():
    spec = load_spec(SPECS / "projector.yaml")
    student, teachers = _models(spec, "teacher")
    teacher = teachers["teacher"]
    graph = build_graph(spec, student, teacher, (1, 28, 28)).graph.train()
    x, y = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10
    out = graph(x, y)
    teacher.eval()
    with torch.no_grad():
        z_t = _tap(teacher, "layer3", x).mean((2, 3))
        t_logits = teacher(x)
        z_s = _tap(student, "block3", x).mean((2, 3))
        s_logits = student(x)
        linear = next(m for m in graph.student_adapters["pair:projector"].modules() if isinstance(m, nn.Linear))
        f_s = _bn(z_s.double() @ linear.weight.double().T + linear.bias.double(), 1e-4)
        f_t = _bn(z_t, 1e-4)
        logsum = torch.log(((f_s - f_t).abs() ** 4).sum())
        ce = -F.log_softmax(s_logits.double(), 1)[torch.arange(8), y].mean()
        p_t = F.softmax(t_logits.double(), 1)
        kl = (p_t * (torch.log(p_t) - F.log_softmax(s_logits.double(), 1))).sum(1).mean()
    assert torch.isclose(out.terms["pair:projector"].double(), logsum, rtol=1e-4)
    assert torch.isclose(out.terms["logits"].double(), kl, rtol=1e-4, atol=1e-6)
    assert torch.isclose(out.total.double(), ce + 2 * logsum + kl, rtol=1e-4)


def test_two_teachers_each_with_its_own_head():
    spec = load_spec(SPECS / "simreg_two_teachers.yaml")
    student, teachers = _models(spec, "resnet", "cnn_wide")
    plan = build_graph(spec, student, teachers, (1, 28, 28))
    graph = plan.graph.train()
    assert list(graph.teachers) == ["resnet", "cnn_wide"] and [r.teacher_name for r in plan.pairs] == list(teachers)
    heads = [graph.student_adapters[t.adapter] for t in graph.terms if t.kind == "pair"]
    assert heads[0] is not heads[1]
    widths = [[m.out_features for m in h.modules() if isinstance(m, nn.Linear)] for h in heads]
    assert widths == [[256, 32, 256, 64], [256, 32, 256, 96]]  # Linear(d,8d)→…→Linear(8d,D_T) per teacher, d = 32
    assert not any("layer" in k or "block" in k for k in graph.student_adapters.state_dict())
    assert not any(k.startswith("_teacher") for k in graph.state_dict())
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    out = graph(x, torch.zeros(6, dtype=torch.long))
    assert [t for t in out.terms] == ["pair:resnet", "pair:cnn_wide"]  # ce_weight 0: no CE term
    emb = torch.flatten(_tap(student, "pool", x), 1)
    for head, (name, teacher) in zip(heads, teachers.items()):
        teacher.eval()
        with torch.no_grad():
            t = torch.flatten(_tap(teacher, "pool", x), 1).double()
            q = head(emb).double()
        expected = (2 - 2 * (F.normalize(q, dim=1) * F.normalize(t, dim=1)).sum(1)).mean()
        assert torch.isclose(out.terms[f"pair:{name}"].double(), expected, rtol=1e-4), name
    out.total.backward()
    assert all(p.grad is not None for h in heads for p in h.parameters())
    assert all(p.grad is None for t in teachers.values() for p in t.parameters())


def test_teachers_read_the_view_they_are_given():
    spec = load_spec(SPECS / "function_matching.yaml")
    student, teachers = _models(spec, "teacher")
    graph = build_graph(spec, student, teachers, (1, 28, 28)).graph.train()
    seen = {}
    graph.teachers["teacher"].register_forward_pre_hook(lambda m, args: seen.setdefault("teacher", args[0]))
    graph.student.register_forward_pre_hook(lambda m, args: seen.setdefault("student", args[0]))
    x, x_t = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    soft = F.softmax(torch.randn(4, 10), 1)
    graph(x, soft, x_t)
    assert seen["teacher"] is x_t and seen["student"] is x
    seen.clear()
    graph(x, soft)
    assert seen["teacher"] is x  # shared view: the identical tensor
