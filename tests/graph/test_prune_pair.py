import pytest
import torch

from kdgraph.graph import build_graph
from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict


@pytest.mark.parametrize("criterion,order", [("l1", 1), ("l2", 2)])
def test_pruned_pair_keeps_top_filters_of_the_teacher_tap(criterion, order):
    spec = spec_from_dict({
        "teacher": {"model": "kdgraph:fmnist_resnet"},
        "student": {"model": "kdgraph:fmnist_cnn"},
        "distill": {"pairs": [{"teacher": "layer3", "student": "block3", "projector": "prune",
                               "prune_criterion": criterion}]},
    })
    torch.manual_seed(0)
    teacher, student = create_model("kdgraph:fmnist_resnet").eval(), create_model("kdgraph:fmnist_cnn")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    plan = build_graph(spec, student, teacher, (1, 28, 28))
    # layer3's producing conv is layer3.1.conv2 (the block's last conv; the shortcut is skipped)
    norms = teacher.layer3[1].conv2.weight.abs().pow(order).sum(dim=(1, 2, 3))
    expected = sorted(torch.topk(norms, 32).indices.tolist())
    report = plan.pairs[0]
    kept = next(m.indices for m in report.adapters.teacher.modules() if hasattr(m, "indices")).tolist()
    assert kept == expected
    assert any("prune" in step or "select" in step or "keep" in step for step in report.adapters.teacher_steps)
    # the pruned teacher feature equals the manual recomputation from the unpruned previous activation
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        full = teacher.layer3(teacher.layer2(teacher.layer1(teacher.stem(x))))
    t = plan.graph.teacher_adapters[report.key](plan.graph.teacher(x)["layer3"])
    torch.testing.assert_close(t, full[:, expected], rtol=1e-5, atol=1e-5)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
