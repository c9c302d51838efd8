"""align_pair end to end: prune wiring, step lists, teacher side, error texts, what the loss needs."""

import pytest
import torch
from torch import nn

from kdgraph.align import AlignmentError, FeatureShape, PairAdapters, align_pair
from kdgraph.align.prune import ChannelSelect, l1_channel_mask


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_prune_projector():
    idx = torch.tensor([1, 4, 6, 7])
    p = align_pair(FeatureShape((4, 7, 7), "map"), FeatureShape((8, 4, 4), "map"), projector="prune", prune_indices=idx)
    assert isinstance(p.teacher.prune, ChannelSelect)
    assert n_params(p.student) == 0 and n_params(p.teacher) == 0
    assert p.student_steps == ["resize 7x7→4x4 (bilinear)"]
    assert p.teacher_steps == ["select 4 of 8 channels (pruned filters)"]
    t = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(p.teacher(t), t[:, idx])
    assert p.out_shape == (4, 4, 4)


def test_prune_with_pool_and_dict_spec():
    idx = l1_channel_mask(torch.randn(8, 3, 3, 3), 4)
    p = align_pair(
        FeatureShape((4, 7, 7), "map"), FeatureShape((8, 4, 4), "map"), projector={"name": "prune"}, prune_indices=idx, pool="gap"
    )
    t = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(p.teacher(t), t.mean((2, 3))[:, idx])
    assert p.out_shape == (4,)


def test_prune_errors():
    s, t = FeatureShape((4, 4, 4), "map"), FeatureShape((8, 4, 4), "map")
    with pytest.raises(AlignmentError, match="l1_channel_mask"):
        align_pair(s, t, projector="prune")
    with pytest.raises(AlignmentError, match="fewer than the student's 8"):
        align_pair(FeatureShape((8, 4, 4), "map"), FeatureShape((4, 4, 4), "map"), projector="prune", prune_indices=torch.arange(4))
    with pytest.raises(AlignmentError, match="keep 3 teacher channels but the student has 4"):
        align_pair(s, t, projector="prune", prune_indices=torch.arange(3))
    with pytest.raises(AlignmentError, match="0..7"):
        align_pair(s, t, projector="prune", prune_indices=torch.tensor([0, 1, 2, 8]))
    with pytest.raises(AlignmentError, match="duplicates"):
        align_pair(s, t, projector="prune", prune_indices=torch.tensor([0, 1, 1, 2]))
    with pytest.raises(AlignmentError, match="projector: prune"):
        align_pair(s, t, projector="auto", prune_indices=torch.arange(4))


def test_teacher_side_never_trainable():
    cases = [
        (FeatureShape((64, 7, 7), "map"), FeatureShape((128, 4, 4), "map"), dict(normalize="bn")),
        (FeatureShape((197, 192), "tokens"), FeatureShape((256, 7, 7), "map"), dict(normalize="layernorm")),
        (FeatureShape((256, 7, 7), "map"), FeatureShape((197, 384), "tokens"), dict(normalize="l2")),
        (FeatureShape((256, 7, 7), "map"), FeatureShape((197, 384), "tokens"), dict(pool="cls", normalize={"name": "bn"})),
    ]
    for s, t, kw in cases:
        p = align_pair(s, t, **kw)
        assert isinstance(p, PairAdapters)
        assert n_params(p.teacher) == 0
        xs = torch.randn(3, *s.shape)
        xt = torch.randn(3, *t.shape)
        assert p.student(xs).shape == (3, *p.out_shape)
        assert p.teacher(xt).shape == (3, *p.out_shape)


def test_student_adapter_state_dict_is_separate_and_loadable():
    p = align_pair(FeatureShape((16, 4, 4), "map"), FeatureShape((32, 4, 4), "map"), projector="linear")
    sd = p.student.state_dict()
    assert set(sd) == {"proj.weight", "proj.bias"}
    q = align_pair(FeatureShape((16, 4, 4), "map"), FeatureShape((32, 4, 4), "map"), projector="linear")
    q.student.load_state_dict(sd, strict=True)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(q.student(x), p.student(x))


def test_describe():
    p = align_pair(FeatureShape((64, 7, 7), "map"), FeatureShape((128, 4, 4), "map"))
    assert p.describe().splitlines() == [
        "student: resize 7x7→4x4 (bilinear) → conv1x1 64→128",
        "teacher: as is",
        "compared at: (128, 4, 4)",
    ]


def test_gradients_flow_to_student_adapter_only():
    p = align_pair(FeatureShape((8,), "vector"), FeatureShape((4,), "vector"), normalize="l2")
    xs = torch.randn(3, 8, requires_grad=True)
    loss = (p.student(xs) - p.teacher(torch.randn(3, 4))).pow(2).sum()
    loss.backward()
    assert p.student.proj.weight.grad is not None and xs.grad is not None


def test_error_text_names_shapes_reason_and_fix():
    with pytest.raises(AlignmentError) as e:
        align_pair(FeatureShape((256, 14, 14), "map"), FeatureShape((768,), "vector"))
    msg = str(e.value)
    assert msg.startswith("cannot align student map (256, 14, 14) with teacher vector (768,)")
    assert "no pool" in msg and msg.endswith("try pool: gap")
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("student, teacher, warned", [
    ((8, 1, 1), (16, 8, 8), "1x1 map (one value per channel) is upsampled to the teacher's 8x8 grid"),
    ((8, 3, 3), (16, 7, 7), "3x3 map is upsampled to the teacher's 7x7 grid"),
    ((8, 4, 4), (16, 4, 9), "4x4 map is upsampled to the teacher's 4x9 grid"),
    ((8, 4, 4), (16, 8, 8), None),  # twice per side: a common stride mismatch, not warned about
    ((8, 14, 14), (16, 7, 7), None),  # downsampling loses nothing the teacher has
    ((8, 1, 1), (16, 8, 8, "gap"), None),  # pooled: no resize at all
])
def test_upsampling_a_small_student_map_is_warned_about(student, teacher, warned):
    pool = teacher[3] if len(teacher) > 3 else None
    p = align_pair(FeatureShape(student, "map"), FeatureShape(teacher[:3], "map"), pool=pool)
    if warned is None:
        assert p.warnings == []
    else:
        assert len(p.warnings) == 1 and p.warnings[0].startswith(f"the student's {warned}")
        assert "pool: gap" in p.warnings[0]


def test_tokens_resized_to_a_finer_teacher_grid_are_warned_about():
    p = align_pair(FeatureShape((5, 32), "tokens"), FeatureShape((65, 32), "tokens"))  # 2x2 (+cls) → 8x8 (+cls)
    assert len(p.warnings) == 1 and "the student's 2x2 map is upsampled to the teacher's 8x8 grid" in p.warnings[0]


# -- what the loss record says the loss needs -------------------------------------------------------------------
def test_a_relational_loss_gets_no_projector_or_layout_change():
    p = align_pair(FeatureShape((32, 7, 7), "map"), FeatureShape((64, 4, 4), "map"), loss="pkt")
    assert p.student_steps == [] and p.teacher_steps == []
    p = align_pair(FeatureShape((32,), "vector"), FeatureShape((64,), "vector"), loss="pkt", projector="none")
    assert p.student_steps == []


def test_a_relational_loss_still_takes_an_explicit_projector():
    p = align_pair(FeatureShape((32,), "vector"), FeatureShape((64,), "vector"), loss="pkt", projector="linear")
    assert p.student_steps == ["linear 32→64"]


def test_same_grid_keeps_the_width_and_aligns_the_grid():
    from kdgraph.losses import LossKind, LossRecord, Needs, mse

    grid = LossRecord("grid", mse, LossKind.FEATURE, needs=Needs.SAME_GRID, layouts=frozenset({"map"}))
    p = align_pair(FeatureShape((32, 14, 14), "map"), FeatureShape((64, 7, 7), "map"), loss=grid)
    assert p.student_steps == ["resize 14x14→7x7 (bilinear)"] and p.out_shape == (64, 7, 7)
    with pytest.raises(AlignmentError, match=r"loss 'grid' compares \(C, H, W\) maps, but the student side is "
                                             r"vector \(32,\)"):
        align_pair(FeatureShape((32, 14, 14), "map"), FeatureShape((64, 7, 7), "map"), loss=grid, pool="gap")


def test_vectors_pools_what_is_no_vector():
    from kdgraph.losses import LossKind, LossRecord, Needs, mse

    vec = LossRecord("vec", mse, LossKind.RELATIONAL, needs=Needs.VECTORS, layouts=frozenset({"vector"}))
    p = align_pair(FeatureShape((49, 32), "tokens"), FeatureShape((64, 7, 7), "map"), loss=vec)
    assert p.student_steps == ["mean over 49 tokens"] and p.teacher_steps == ["gap (64, 7, 7)→(64,)"]


def test_same_shape_is_the_default():
    p = align_pair(FeatureShape((32, 7, 7), "map"), FeatureShape((64, 7, 7), "map"), loss="mse")
    assert p.student_steps == ["conv1x1 32→64"]
