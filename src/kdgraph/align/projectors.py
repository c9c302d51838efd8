"""Student-side projectors: trainable maps from the student's channels to the teacher's.

A projector sees the student feature after pooling and layout conversion, so
it knows the common layout and the two channel counts ``d`` (student) and
``D_T`` (teacher). Projectors are saved apart from the student.

| name       | map ``(B, C, H, W)``                      | tokens / vector                  |
| ---------- | ----------------------------------------- | -------------------------------- |
| ``auto``   | identity if ``d == D_T`` else ``conv1x1`` | identity if equal else ``linear``|
| ``none``   | identity; error if ``d != D_T``           | same                             |
| ``identity``| same as ``none``                         | same                             |
| ``linear`` | ``Conv2d(d, D_T, 1, bias=True)``          | ``Linear(d, D_T, bias=True)``    |
| ``conv1x1``| ``Conv2d(d, D_T, 1, bias=False)`` [+ BN]  | error: maps only                 |
| ``mlp``    | per position: 1x1 convs + BatchNorm2d     | Linear layers (+ BatchNorm)      |

``{name: conv1x1, bn: true}`` adds a trainable ``BatchNorm2d`` after the
convolution: the connector of AB, OFD and ICKD (RepDistiller's ``ConvReg``
without its ReLU).

``linear`` on a map is a Linear over the channel dim at each position, which
is exactly a 1x1 convolution with bias; it is built as one so no permutes
are needed.

``mlp`` takes ``{name: mlp, hidden: [...], bn: ..., relu: ..., bias: true}``:
``Linear(d, h1) [BN] [ReLU] Linear(h1, h2) ... Linear(h_last, D_T)``. Hidden
widths are ints or multiples of the student dim written ``"2d"``, ``"d"``,
``"0.5d"``. ``bn`` / ``relu`` are one bool for every hidden layer or a list
with one bool per hidden layer (defaults: ``bn: false``, ``relu: true``).
SimReg's head is ``hidden: [2d, d, 2d], bn: [true, false, true],
relu: [true, false, true]``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from torch import nn

from kdgraph.align.normalizers import TokenBatchNorm
from kdgraph.named import Choice, parse_named

__all__ = [
    "PROJECTORS",
    "parse_projector",
    "resolve_width",
    "mlp_widths",
    "build_mlp",
    "build_projector",
]

_WIDTH_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)?\s*d\s*$")


def _bias(name: str, key: str = "bias") -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"projector {name!r}: {key} must be true or false, got {value!r}")
        return value

    return check


def _hidden(value: Any) -> list[int | str]:
    """``hidden``: a list of widths, each an int >= 1 or a multiple of the student dim (``2d``); resolved later."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"mlp hidden must be a list of widths, got {value!r}")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, (int, str)):
            raise ValueError(f"mlp hidden width {width!r} is not an int or a multiple like '2d'")
        if isinstance(width, str) and not _WIDTH_RE.match(width):
            raise ValueError(f"mlp hidden width {width!r} is not an int or a multiple of d like '2d', 'd', '0.5d'")
        if isinstance(width, int) and width < 1:
            raise ValueError(f"mlp hidden width {width!r} must be at least 1")
    return list(value)


def _flags(key: str) -> Callable[[Any], bool | list[bool]]:
    def check(value: Any) -> bool | list[bool]:
        if isinstance(value, bool) or (isinstance(value, (list, tuple)) and all(isinstance(f, bool) for f in value)):
            return value if isinstance(value, bool) else list(value)
        raise ValueError(f"mlp {key} must be a bool or a list of bools, got {value!r}")

    return check


def _check_mlp(options: dict[str, Any]) -> None:
    n = len(options.get("hidden", []))
    for key in ("bn", "relu"):
        flags = options.get(key)
        if isinstance(flags, list) and len(flags) != n:
            raise ValueError(f"mlp {key} has {len(flags)} flags but hidden has {n} layers; give one per hidden layer "
                             "or one bool")


PROJECTORS: dict[str, Choice] = {
    "auto": Choice(),
    "none": Choice(),
    "identity": Choice(),
    "linear": Choice({"bias": _bias("linear")}),
    "conv1x1": Choice({"bias": _bias("conv1x1"), "bn": _bias("conv1x1", "bn")}),
    "mlp": Choice({"hidden": _hidden, "bn": _flags("bn"), "relu": _flags("relu"), "bias": _bias("mlp")}, _check_mlp),
    "prune": Choice(),
}
"""Every projector name with the options it takes (checked when the spec loads, and again by the planner)."""


def parse_projector(spec: Any) -> tuple[str, dict[str, Any]]:
    """Check ``"linear"`` / ``{name: linear, bias: false}`` / None (``auto``); returns ``(name, options)``."""
    return parse_named(spec, "projector", PROJECTORS, "auto")


def resolve_width(width: int | str, d: int) -> int:
    """A hidden width: an int, or a multiple of the student dim ``d`` (``"2d"``, ``"d"``, ``"0.5d"``)."""
    _hidden([width])
    if isinstance(width, int):
        return width
    m = _WIDTH_RE.match(width)
    w = int(round((float(m.group(1)) if m.group(1) else 1.0) * d))
    if w < 1:
        raise ValueError(f"mlp hidden width {width!r} resolves to {w} for d={d}; it must be at least 1")
    return w


def _per_layer(flag: bool | list[bool], n: int, key: str) -> list[bool]:
    flag = _flags(key)(flag)
    _check_mlp({"hidden": [1] * n, key: flag})
    return [flag] * n if isinstance(flag, bool) else flag


def mlp_widths(hidden: list[int | str], d: int) -> list[int]:
    """Resolve every hidden width against the student dim ``d``."""
    return [resolve_width(h, d) for h in _hidden(hidden)]


def build_mlp(
    layout: str,
    d_in: int,
    d_out: int,
    hidden: list[int | str] = (),
    bn: bool | list[bool] = False,
    relu: bool | list[bool] = True,
    bias: bool = True,
) -> tuple[nn.Sequential, str]:
    """Build ``Linear(d, h1) [BN] [ReLU] ... Linear(h_last, D_T)`` for a layout.

    On maps every Linear is a ``Conv2d(k=1)`` and BN is ``BatchNorm2d`` (the
    MLP runs at each position); on tokens BN is :class:`TokenBatchNorm`;
    on vectors ``BatchNorm1d``. The BN layers here are ordinary trainable
    BatchNorm with running statistics, part of the projector.
    """
    widths = mlp_widths(list(hidden), d_in)
    bns = _per_layer(bn, len(widths), "bn")
    relus = _per_layer(relu, len(widths), "relu")

    def lin(a: int, b: int) -> nn.Module:
        return nn.Conv2d(a, b, 1, bias=bias) if layout == "map" else nn.Linear(a, b, bias=bias)

    def norm(c: int) -> nn.Module:
        if layout == "map":
            return nn.BatchNorm2d(c)
        if layout == "tokens":
            return TokenBatchNorm(c)
        return nn.BatchNorm1d(c)

    layers: list[nn.Module] = []
    parts = [str(d_in)]
    prev = d_in
    for w, b_, r_ in zip(widths, bns, relus):
        layers.append(lin(prev, w))
        tag = str(w)
        if b_:
            layers.append(norm(w))
            tag += " bn"
        if r_:
            layers.append(nn.ReLU(inplace=False))
            tag += " relu"
        parts.append(f"[{tag}]" if (b_ or r_) else tag)
        prev = w
    layers.append(lin(prev, d_out))
    parts.append(str(d_out))
    where = " (1x1 convs per position)" if layout == "map" else ""
    return nn.Sequential(*layers), "mlp " + "→".join(parts) + where


def build_projector(
    spec: str | Mapping[str, Any] | None, layout: str, d_in: int, d_out: int
) -> tuple[nn.Module | None, str | None]:
    """Build the projector for a student feature of ``layout`` with ``d_in`` channels.

    Returns ``(module, step description)``, or ``(None, None)`` for an
    identity. Raises ``ValueError`` (with what to try) when the choice cannot
    map ``d_in`` to ``d_out``. ``prune`` is not built here: it keeps the
    student as is and acts on the teacher (see :mod:`kdgraph.align.plan`).
    """
    name, opts = parse_projector(spec)
    if name == "auto":
        if d_in == d_out:
            return None, None
        name = "conv1x1" if layout == "map" else "linear"
    if name in ("none", "identity", "prune"):
        if d_in != d_out and name != "prune":
            raise ValueError(
                f"projector {name!r} keeps the student's {d_in} channels but the teacher has {d_out}; "
                f"try projector: auto (or {'conv1x1' if layout == 'map' else 'linear'})"
            )
        return None, None
    if name == "linear":
        bias = opts.get("bias", True)
        if layout == "map":
            return nn.Conv2d(d_in, d_out, 1, bias=bias), f"linear {d_in}→{d_out} (as conv1x1{' with bias' if bias else ''})"
        return nn.Linear(d_in, d_out, bias=bias), f"linear {d_in}→{d_out}"
    if name == "conv1x1":
        if layout != "map":
            raise ValueError(f"projector 'conv1x1' needs a map feature but the feature is {layout}; try projector: linear")
        conv = nn.Conv2d(d_in, d_out, 1, bias=opts.get("bias", False))
        if opts.get("bn", False):
            return nn.Sequential(conv, nn.BatchNorm2d(d_out)), f"conv1x1 {d_in}→{d_out} + bn"
        return conv, f"conv1x1 {d_in}→{d_out}"
    # mlp
    return build_mlp(
        layout,
        d_in,
        d_out,
        hidden=opts.get("hidden", []),
        bn=opts.get("bn", False),
        relu=opts.get("relu", True),
        bias=opts.get("bias", True),
    )
