"""The loss record: every loss is one registered record saying what it is and what it needs.

    @register_loss("mse", kind="feature")
    def mse(s, t): ...

    @register_loss("at", kind="feature", needs="same-grid", layouts=("map",))
    def attention_transfer(s, t, p=2.0): ...

The record is the only place that says what a loss allows. The spec reads it (which names a pair or the logits term
may use, their keyword parameters and defaults), the adapter planner reads it (``needs``: what to insert between a
tapped feature and the loss), the graph calls ``fn`` with the spec's parameters, and ``kdgraph schema --markdown``
lists every record. A loss module is any module in ``kdgraph/losses/``: the package imports them all, so adding a
loss is one decorated function in one module (see docs/architecture.md, "How to add a loss").
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from torch import Tensor, nn

from kdgraph.errors import KdgraphError, suggest

__all__ = ["LossKind", "Needs", "LossRecord", "REQUIRED", "PAIR_KINDS", "register_loss", "get_loss", "losses",
           "UnknownLossError"]


class LossKind(str, Enum):
    """Which term a loss serves: the logits term, or a pair of tapped features."""

    LOGIT = "logit"
    """``fn(student_logits, teacher_logits, temperature=..., ...)`` on ``(B, K)`` logits: ``distill.logits.loss``."""
    FEATURE = "feature"
    """``fn(s, t, ...)`` on one student and one teacher feature, compared position by position: ``pairs[].loss``."""
    RELATIONAL = "relational"
    """``fn(s, t, ...)`` comparing relations between the samples of the batch (PKT, RKD, SP): ``pairs[].loss``."""


PAIR_KINDS = (LossKind.FEATURE, LossKind.RELATIONAL)
"""The kinds a pair's ``loss:`` may name."""


class Needs(str, Enum):
    """What a pair loss needs from the adapters (``kdgraph.align``) between the tapped features and itself."""

    SAME_SHAPE = "same-shape"
    """Equal shapes: the student is brought to the teacher's layout and grid, and ``projector: auto`` to its width."""
    SAME_GRID = "same-grid"
    """Equal layout and spatial grid (or token count), any width: ``projector: auto`` inserts no projector."""
    VECTORS = "vectors"
    """``(B, D)`` vectors of any width: a side that is no vector is pooled (``pool: gap`` when none is set)."""
    ANY = "any"
    """Any shapes, flattened per sample; only the batch must agree: no layout change and no projector by default."""


REQUIRED = inspect.Parameter.empty
"""The default of a parameter the spec must give (``loss: {name: ..., beta: 8}``)."""

_LAYOUTS = ("map", "tokens", "vector")


@dataclass(frozen=True)
class LossRecord:
    """One registered loss. Everything the spec, the planner, the graph and the docs know about it is here.

    The extension points the method catalogue needs have their place (each is refused by the graph until it is
    wired; see docs/architecture.md): ``taps`` (layers per model, e.g. 2 for FSP), ``module`` (a trainable or
    stateful loss-side module: CRD's embeddings and memory bank, VID's variances, FT's paraphraser; saved in
    ``adapters.safetensors`` and checkpointed with the adapters) and ``inputs`` (what the run must hand the loss
    besides the tensors: ``labels`` for DKD, ``index``, the data-set positions, and ``num_data`` for CRD).

    The function's leading positional parameters without a default are its tensors: two (student, teacher), or
    with ``taps=N`` either two sequences of N or 2N tensors (student taps, then teacher taps). Every later parameter
    is a spec parameter (``loss: {name: ..., key: value}``), required when it has no default, except ``module`` and
    the parameters ``inputs`` names.
    """

    name: str
    """The spec name (``loss: mse``)."""
    fn: Callable[..., Tensor]
    """The pure function: its tensors first, then keyword parameters."""
    kind: LossKind
    needs: Needs = Needs.SAME_SHAPE
    layouts: frozenset[str] = frozenset(_LAYOUTS)
    """Layouts the loss accepts after the adapters: ``map`` ``(C, H, W)``, ``tokens`` ``(N, D)``, ``vector``."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Spec parameters (after the tensors; not ``module`` nor the ``inputs``), name -> default or REQUIRED."""
    taps: int = 1
    """Tapped layers per model."""
    module: Optional[Callable[..., nn.Module]] = None
    """``module(student_shape, teacher_shape, **params) -> nn.Module``, passed to ``fn`` as ``module=``."""
    inputs: Mapping[str, str] = field(default_factory=dict)
    """Run inputs -> the parameter of ``fn`` that takes it: ``labels`` (the batch's hard labels), ``index`` (its
    data-set positions), ``num_data`` (the training set's size); ``{"labels": "target"}`` for DKD."""

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring, on one line."""
        doc = (inspect.getdoc(self.fn) or "").strip()
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def function(self) -> str:
        """``kdgraph.losses.feature.mse``: where the function lives."""
        return f"{self.fn.__module__}.{self.fn.__name__}"

    def defaults(self) -> dict[str, Any]:
        """The parameters that have a default, with it."""
        return {k: v for k, v in self.params.items() if v is not REQUIRED}


_RECORDS: dict[str, LossRecord] = {}
_INPUTS = ("labels", "index", "num_data")


def _params(fn: Callable[..., Tensor], skip: Iterable[str], taps: int) -> dict[str, Any]:
    names = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    tensors = 0
    while tensors < len(names) and names[tensors].kind in positional and names[tensors].default is REQUIRED:
        tensors += 1
    if tensors not in {2, 2 * taps}:
        want = "the student and the teacher tensor" + (f" (or {2 * taps} tensors: student taps, then teacher taps)"
                                                        if taps > 1 else "")
        raise TypeError(f"a loss takes {want} first, then keyword parameters; got {fn.__name__}{inspect.signature(fn)}")
    skip = set(skip)
    out = {}
    for p in names[tensors:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind == p.VAR_POSITIONAL else "**"
            raise TypeError(f"loss {fn.__name__}: {stars}{p.name} cannot be set from a spec; name every parameter")
        if p.name not in skip:
            out[p.name] = p.default
    return out


def register_loss(name: str, *, kind: Union[LossKind, str], needs: Union[Needs, str] = Needs.SAME_SHAPE,
                  layouts: Optional[Iterable[str]] = None, taps: int = 1,
                  module: Optional[Callable[..., nn.Module]] = None,
                  inputs: Union[Iterable[str], Mapping[str, str]] = ()) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register the decorated function as loss ``name``; the function is returned unchanged.

    Works on a plain function in its own module too: ``register_loss("dkd", kind="logit")(dkd)``. ``layouts``
    defaults to every layout for pair losses and to ``vector`` for logit losses. Parameters are read from the
    signature (see :class:`LossRecord`). ``inputs`` names run inputs the function takes by keyword, under their
    own names (``inputs=("index",)``) or under its parameter's (``inputs={"labels": "target"}``).
    """
    kind, needs = LossKind(kind), Needs(needs)
    shapes = frozenset(layouts if layouts is not None else (("vector",) if kind is LossKind.LOGIT else _LAYOUTS))
    if not shapes or not shapes <= set(_LAYOUTS):
        raise ValueError(f"loss {name!r}: layouts must be some of {', '.join(_LAYOUTS)}, got {sorted(shapes)}")
    wanted = dict(inputs) if isinstance(inputs, Mapping) else {key: key for key in inputs}
    if not set(wanted) <= set(_INPUTS):
        raise ValueError(f"loss {name!r}: inputs must be some of {', '.join(_INPUTS)}, got {sorted(wanted)}")
    if taps < 1:
        raise ValueError(f"loss {name!r}: taps must be at least 1, got {taps}")

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        skip = set(wanted.values()) | ({"module"} if module is not None else set())
        record = LossRecord(name=name, fn=fn, kind=kind, needs=needs, layouts=shapes, params=_params(fn, skip, taps),
                            taps=taps, module=module, inputs=MappingProxyType(wanted))
        old = _RECORDS.get(name)
        if old is not None and old.function != record.function:
            raise ValueError(f"loss {name!r} is registered twice: {old.function} and {record.function}")
        _RECORDS[name] = record
        return fn

    return register


class UnknownLossError(KdgraphError, KeyError):
    """Unknown loss name (also a ``KeyError``); the message lists valid names and the closest match."""

    def __init__(self, name: str, choices: Iterable[str], kind: str = "") -> None:
        self.name = name
        self.choices = sorted(choices)
        close = suggest(name, self.choices)
        self.suggestion: Optional[str] = close[0] if close else None
        what = f"{kind} loss" if kind else "loss"
        msg = f"unknown {what} {name!r}; valid names: {', '.join(self.choices)}"
        if self.suggestion is not None:
            msg += f"; did you mean {self.suggestion!r}?"
        super().__init__(msg)


def _kinds(kind: Union[LossKind, str, Iterable[Union[LossKind, str]], None]) -> tuple[LossKind, ...]:
    if kind is None:
        return tuple(LossKind)
    if isinstance(kind, (LossKind, str)):
        return (LossKind(kind),)
    return tuple(LossKind(k) for k in kind)


def losses(kind: Union[LossKind, str, Iterable[Union[LossKind, str]], None] = None) -> list[LossRecord]:
    """Every registered record of ``kind`` (a kind, several, or None: all), by kind then name."""
    kinds = _kinds(kind)
    order = list(LossKind)
    return sorted((r for r in _RECORDS.values() if r.kind in kinds), key=lambda r: (order.index(r.kind), r.name))


def get_loss(name: str, kind: Union[LossKind, str, Iterable[Union[LossKind, str]], None] = None) -> LossRecord:
    """The record registered as ``name``, among the losses of ``kind`` (None: any); else UnknownLossError.

    The message calls pair losses (``PAIR_KINDS``) feature losses, as a spec reader knows them."""
    kinds = _kinds(kind)
    record = _RECORDS.get(name)
    if record is None or record.kind not in kinds:
        word = "logit" if kinds == (LossKind.LOGIT,) else "feature" if set(kinds) <= set(PAIR_KINDS) else ""
        raise UnknownLossError(name, [r.name for r in losses(kinds)], word)
    return record
