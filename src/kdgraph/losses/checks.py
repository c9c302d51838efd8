"""Shape checks shared by the method-catalogue losses.

Every check raises :class:`ValueError` with the loss's name, both shapes and what would be valid, so a message
read in a training log says which term failed and why. The checks read shapes only: none of them synchronises a
CUDA stream (no ``.item()``, no value-dependent branch).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_batch", "check_logits", "check_maps", "check_labels", "check_positive"]


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_batch(name: str, student: Tensor, teacher: Tensor, *, min_batch: int = 1) -> None:
    """Both tensors are ``(B, ...)`` with the same ``B >= min_batch``; widths may differ."""
    if student.ndim < 2 or teacher.ndim < 2:
        raise ValueError(
            f"{name}: expected student and teacher tensors of shape (B, ...) with at least 2 dims, "
            f"got {_shape(student)} and {_shape(teacher)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}")
    if student.shape[0] < min_batch:
        raise ValueError(f"{name}: needs a batch of at least {min_batch} samples, got {student.shape[0]}")


def check_logits(name: str, student: Tensor, teacher: Tensor, *, min_classes: int = 1) -> None:
    """Two ``(B, K)`` logit tensors of equal shape, ``B >= 1`` and ``K >= min_classes``."""
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"{name}: expected two (B, K) logit tensors of equal shape, got {_shape(student)} and {_shape(teacher)}"
        )
    if student.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if student.shape[1] < min_classes:
        raise ValueError(f"{name}: needs at least {min_classes} classes, got K = {student.shape[1]}")


def check_labels(name: str, target: Tensor | None, batch: int) -> Tensor:
    """``target`` is int class indices ``(B,)``; returns it flattened. Soft targets are refused."""
    if target is None:
        raise ValueError(f"{name}: needs the ground-truth labels: pass target=<(B,) int class indices>")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{name}: needs int class indices, got a {target.dtype} tensor of shape {_shape(target)} "
            "(soft targets, e.g. from mixup/cutmix, have no single ground-truth class)"
        )
    if _shape(target) != (batch,):
        raise ValueError(f"{name}: class-index target must have shape ({batch},), got {_shape(target)}")
    return target


def check_maps(
    name: str,
    student: Tensor,
    teacher: Tensor,
    *,
    same_channels: bool,
    same_grid: bool = True,
    min_batch: int = 1,
) -> None:
    """Feature maps ``(B, C, *grid)`` (at least one grid dim: ``(B, C, N)`` tokens-as-channels or ``(B, C, H, W)``).

    ``same_channels``: the widths ``C`` must agree; ``same_grid``: the grids must agree.
    """
    if student.ndim < 3 or teacher.ndim < 3:
        raise ValueError(
            f"{name}: expected feature maps (B, C, H, W) (or (B, C, N)), got {_shape(student)} and {_shape(teacher)}; "
            "pooled vectors have no spatial grid for this loss"
        )
    check_batch(name, student, teacher, min_batch=min_batch)
    if same_channels and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{name}: student and teacher widths differ: {student.shape[1]} vs {teacher.shape[1]} channels; "
            "a projector adapter must map the student to the teacher's width"
        )
    if same_grid and student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"{name}: student and teacher spatial grids differ: {_shape(student)[2:]} vs {_shape(teacher)[2:]}; "
            "a layout adapter must resize one map to the other's grid"
        )


def check_positive(name: str, **values: float) -> None:
    """Every keyword value is ``> 0``."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")
