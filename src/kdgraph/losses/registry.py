"""The loss record: every loss is one registered record saying what it is and what it needs.

    @register_loss("mse", kind="feature")
    def mse(s, t): ...

    @register_loss("vid", kind="feature", needs="same-grid", layouts=("map",), module=_regressor)
    def vid_term(student, teacher, *, module): ...

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

__all__ = ["LossKind", "Needs", "LossRecord", "REQUIRED", "PAIR_KINDS", "MANY", "STEP_INPUTS", "BUILD_INPUTS",
           "register_loss", "get_loss", "losses", "UnknownLossError"]


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
    SAME_WIDTH = "same-width"
    """Equal layout and width, any grid (or token count): ``projector: auto`` adds a projector, nothing is resized."""
    VECTORS = "vectors"
    """``(B, D)`` vectors of any width: a side that is no vector is pooled (``pool: gap`` when none is set)."""
    ANY = "any"
    """Any shapes, flattened per sample; only the batch must agree: no layout change and no projector by default."""


REQUIRED = inspect.Parameter.empty
"""The default of a parameter the spec must give (``loss: {name: ..., beta: 8}``)."""

MANY = "many"
"""``taps=MANY``: one or more layers per model, as many as the spec names (ReviewKD: every stage)."""

STEP_INPUTS = ("labels", "index", "num_data", "targets", "image_sizes")
"""Run inputs a loss function can take at every step: the batch's hard labels (``(B,)`` class indices, or
``(B, H, W)`` label maps for segmentation), its data-set positions ``(B,)``, the training set's size, and for
detection the batch's targets (one dict per image, torchvision's: ``boxes`` ``(N_i, 4)`` ``(x1, y1, x2, y2)`` in
the pixels of the image the models see, ``labels`` ``(N_i,)``) with each image's ``(height, width)`` in those pixels
(torchvision's ``ImageList.image_sizes``: before batch padding)."""
BUILD_INPUTS = ("num_data", "seed", "teacher_batchnorm")
"""Run inputs a loss module's factory can take when the graph is built: the training set's size, a seed of its own
(for a :class:`kdgraph.losses.state.RandomStream`), and the teacher's BatchNorm right before each teacher tap (read
from the unfolded teacher; None where there is none)."""

_LAYOUTS = ("map", "tokens", "vector")


@dataclass(frozen=True)
class LossRecord:
    """One registered loss. Everything the spec, the planner, the graph and the docs know about it is here.

    The function's leading positional parameters without a default are its tensors: two (student, teacher), or
    with ``taps=N`` (or ``MANY``) either two sequences of taps or 2N tensors (student taps, then teacher taps). Every
    later parameter is a spec parameter (``loss: {name: ..., key: value}``), required when it has no default, except
    ``module`` and the parameters ``inputs`` names.

    ``module`` is a factory ``module(student, teacher, *, params...) -> nn.Module`` of a loss-side module (CRD's
    heads and memory bank, VID's regressor, FT's paraphraser and translator): ``student`` and ``teacher`` are the
    :class:`kdgraph.align.FeatureShape` after the adapters (a list of them with several taps), its keyword
    parameters are spec parameters too, and it may take the ``BUILD_INPUTS`` it names. The graph builds it once,
    keeps it beside the adapters (optimised with the student, checkpointed, saved in ``adapters.safetensors``, never
    in ``student.safetensors``) and passes it to the function as ``module=``. A module with an ``objective(s, t)``
    method has an objective of its own that a stage can train (``train.stages[].objectives``: FT's paraphraser).
    """

    name: str
    """The spec name (``loss: mse``)."""
    fn: Callable[..., Tensor]
    """The pure function: its tensors first, then keyword parameters."""
    kind: LossKind
    needs: Needs = Needs.SAME_SHAPE
    """What each tap pair needs from the adapters."""
    layouts: frozenset[str] = frozenset(_LAYOUTS)
    """Layouts the loss accepts after the adapters: ``map`` ``(C, H, W)``, ``tokens`` ``(N, D)``, ``vector``."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Spec parameters (of the function and of the module's factory; not ``module`` nor the ``inputs``), name ->
    default or REQUIRED."""
    taps: Union[int, str] = 1
    """Tapped layers per model: a number, or ``MANY`` (one or more, as the spec names them)."""
    module: Optional[Callable[..., nn.Module]] = None
    """The loss-side module's factory, passed to ``fn`` as ``module=`` (see above)."""
    inputs: Mapping[str, str] = field(default_factory=dict)
    """Run inputs -> the parameter (of ``fn`` or of the factory) that takes it: ``STEP_INPUTS`` for the function
    (``{"labels": "target"}`` for DKD), ``BUILD_INPUTS`` for the factory."""
    module_params: frozenset[str] = frozenset()
    """The spec parameters that go to the factory (the others go to ``fn``; one named by both goes to both)."""
    fn_params: frozenset[str] = frozenset()
    """The spec parameters that go to ``fn``."""
    spread: bool = False
    """With several taps: ``fn`` takes 2N tensors (``fsp(s1, s2, t1, t2)``) rather than two sequences."""

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring, on one line."""
        doc = (inspect.getdoc(self.fn) or "").strip()
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def function(self) -> str:
        """``kdgraph.losses.feature.mse``: where the function lives."""
        return f"{self.fn.__module__}.{self.fn.__name__}"

    @property
    def several(self) -> bool:
        """Whether a pair names lists of layers (``taps`` other than 1)."""
        return self.taps != 1

    def defaults(self) -> dict[str, Any]:
        """The parameters that have a default, with it."""
        return {k: v for k, v in self.params.items() if v is not REQUIRED}

    def split(self, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The spec's parameters ``given`` as ``(for fn, for the module's factory)``."""
        return ({k: v for k, v in given.items() if k in self.fn_params},
                {k: v for k, v in given.items() if k in self.module_params})


_RECORDS: dict[str, LossRecord] = {}


def _leading(fn: Callable[..., Any]) -> int:
    """How many leading positional parameters without a default ``fn`` has (its tensors)."""
    names = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    tensors = 0
    while tensors < len(names) and names[tensors].kind in positional and names[tensors].default is REQUIRED:
        tensors += 1
    return tensors


def _params(fn: Callable[..., Any], skip: Iterable[str], taps: Union[int, str], leading: Optional[int] = None,
            what: str = "a loss") -> dict[str, Any]:
    """The keyword parameters of ``fn`` after its leading tensors (``leading`` of them, or counted: two, or 2N)."""
    names = list(inspect.signature(fn).parameters.values())
    tensors = _leading(fn)
    allowed = {leading} if leading is not None else {2} | ({2 * taps} if isinstance(taps, int) else set())
    if tensors not in allowed:
        want = ("the student and the teacher tensor" + (f" (or {2 * taps} tensors: student taps, then teacher taps)"
                                                         if isinstance(taps, int) and taps > 1 else "")
                if leading is None else "the student's and the teacher's feature shapes")
        raise TypeError(f"{what} takes {want} first, then keyword parameters; got {fn.__name__}{inspect.signature(fn)}")
    skip = set(skip)
    out = {}
    for p in names[tensors:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind == p.VAR_POSITIONAL else "**"
            raise TypeError(f"{what} {fn.__name__}: {stars}{p.name} cannot be set from a spec; name every parameter")
        if p.name not in skip:
            out[p.name] = p.default
    return out


def _check_taps(name: str, taps: Union[int, str]) -> None:
    if taps != MANY and (not isinstance(taps, int) or isinstance(taps, bool) or taps < 1):
        raise ValueError(f"loss {name!r}: taps must be at least 1 or {MANY!r}, got {taps!r}")


def register_loss(name: str, *, kind: Union[LossKind, str], needs: Union[Needs, str] = Needs.SAME_SHAPE,
                  layouts: Optional[Iterable[str]] = None, taps: Union[int, str] = 1,
                  module: Optional[Callable[..., nn.Module]] = None,
                  inputs: Union[Iterable[str], Mapping[str, str]] = ()) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register the decorated function as loss ``name``; the function is returned unchanged.

    Works on a plain function in its own module too: ``register_loss("dkd", kind="logit")(dkd)``. ``layouts``
    defaults to every layout for pair losses and to ``vector`` for logit losses. Parameters are read from the
    signatures of the function and of the ``module`` factory (see :class:`LossRecord`). ``inputs`` names run inputs
    under their own names (``inputs=("index",)``) or under the parameter's (``inputs={"labels": "target"}``).
    """
    kind, needs = LossKind(kind), Needs(needs)
    shapes = frozenset(layouts if layouts is not None else (("vector",) if kind is LossKind.LOGIT else _LAYOUTS))
    if not shapes or not shapes <= set(_LAYOUTS):
        raise ValueError(f"loss {name!r}: layouts must be some of {', '.join(_LAYOUTS)}, got {sorted(shapes)}")
    wanted = dict(inputs) if isinstance(inputs, Mapping) else {key: key for key in inputs}
    known = set(STEP_INPUTS) | set(BUILD_INPUTS)
    if not set(wanted) <= known:
        raise ValueError(f"loss {name!r}: inputs must be some of {', '.join(sorted(known))}, got {sorted(wanted)}")
    _check_taps(name, taps)
    if kind is LossKind.LOGIT and (taps != 1 or module is not None):
        raise ValueError(f"loss {name!r}: a logit loss compares the two logit tensors; it takes no taps or module")

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        skip = set(wanted.values()) | ({"module"} if module is not None else set())
        fn_params = _params(fn, skip, taps)
        mod_params = _params(module, skip, taps, leading=2, what="a loss module factory") if module else {}
        build_only = {wanted[k] for k in set(wanted) - set(STEP_INPUTS)}
        step_only = {wanted[k] for k in set(wanted) - set(BUILD_INPUTS)}
        if module is not None and step_only & set(inspect.signature(module).parameters):
            raise ValueError(f"loss {name!r}: the module factory takes {sorted(step_only)}, which exist only at a step")
        if build_only & set(inspect.signature(fn).parameters):
            raise ValueError(f"loss {name!r}: the function takes {sorted(build_only)}, which only a module factory can")
        for key in set(fn_params) & set(mod_params):
            if fn_params[key] != mod_params[key]:
                raise ValueError(f"loss {name!r}: parameter {key!r} has two defaults ({fn_params[key]!r} in the "
                                 f"function, {mod_params[key]!r} in the module factory)")
        record = LossRecord(name=name, fn=fn, kind=kind, needs=needs, layouts=shapes,
                            params={**fn_params, **mod_params}, taps=taps, module=module,
                            inputs=MappingProxyType(wanted), module_params=frozenset(mod_params),
                            fn_params=frozenset(fn_params), spread=taps != 1 and _leading(fn) != 2)
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
