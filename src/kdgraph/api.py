"""The Python API: the same pipeline as ``kdgraph train``, with specs built in code and live modules.

    import kdgraph
    result = kdgraph.distill(
        {"data": {"dataset": "fashion-mnist"}, "distill": {"pairs": [{"teacher": "layer3", "student": "block3"}]}},
        teacher=my_teacher, student=my_student,
    )
    result.student, result.metrics, result.summary
"""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import nn

from kdgraph.errors import SpecError
from kdgraph.spec import Spec, spec_from_dict
from kdgraph.train import TrainResult, train

__all__ = ["distill"]


def distill(spec: Union[Spec, dict[str, Any]], *, teacher: Union[nn.Module, dict[str, nn.Module], None] = None,
            student: Optional[nn.Module] = None, write: bool = False, overwrite: bool = False,
            quiet: bool = True) -> TrainResult:
    """Train ``student`` (distilled from ``teacher`` when given) as ``spec`` says; returns student, metrics, summary.

    A dict spec may leave out ``teacher``/``student`` when live modules are passed: they are recorded as
    ``live:teacher`` / ``live:student``; several teachers are passed as a dict ``{name: module}`` and recorded as
    ``teachers: [{name, model: live:NAME}]``. Nothing is written to disk unless ``write=True``.
    """
    if isinstance(spec, dict):
        doc = dict(spec)
        if student is not None:
            doc.setdefault("student", {"model": "live:student"})
        if isinstance(teacher, dict):
            if "teacher" not in doc:
                doc.setdefault("teachers", [{"name": name, "model": f"live:{name}"} for name in teacher])
        elif teacher is not None:
            doc.setdefault("teacher", {"model": "live:teacher"})
        spec = spec_from_dict(doc, source="spec")
    elif not isinstance(spec, Spec):
        raise SpecError(f"spec must be a kdgraph.Spec or a dict, not {type(spec).__name__}")
    return train(spec, student=student, teacher=teacher, write=write, overwrite=overwrite, quiet=quiet)
