"""Model references: ``timm:NAME``, ``torchvision:NAME``, ``hf:ORG/NAME``, ``python:package.module:factory``,
``kdgraph:NAME``.

The scheme before the colon picks a builder from ``MODEL_SOURCES`` (as a name prefix picks a reader in timm); every
builder is ``build(name, kwargs, pretrained) -> nn.Module`` and raises ``ModelError`` for what the user can fix.
``python:`` references import and run user code: only use specs you trust (see docs/spec.md).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from torch import nn

from kdgraph.errors import ModelError, suggest
from kdgraph.models.weights import BUILTIN_DIR, load_weights
from kdgraph.models.zoo import ZOO

__all__ = ["MODEL_SOURCES", "SCHEMES", "build_model", "create_model"]


def _nearest(name: str, choices: list[str]) -> str:
    near = suggest(name, choices, n=3)
    return f"; nearest: {', '.join(near)}" if near else ""


def _timm(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import timm

    if name not in timm.list_models():
        raise ModelError(f"timm has no model {name!r}{_nearest(name, timm.list_models())}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ModelError(f"timm:{name} rejected kwargs {kwargs}: {err}") from None
    except Exception as err:  # noqa: BLE001 - downloads fail in many ways; all mean "no weights here"
        if not pretrained:
            _construct_failed(f"timm:{name}", kwargs, err)
        raise ModelError(
            f"timm:{name}: pretrained weights are neither cached locally nor downloadable ({type(err).__name__}). "
            "Download them once with network access, or give `weights: path/to/file.safetensors`."
        ) from None


def _torchvision(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise ModelError(f"torchvision has no model {name!r}{_nearest(name, names)}")
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as err:
        raise ModelError(f"torchvision:{name} rejected kwargs {kwargs}: {err}") from None
    except Exception as err:  # noqa: BLE001
        if not pretrained:
            _construct_failed(f"torchvision:{name}", kwargs, err)
        raise ModelError(
            f"torchvision:{name}: pretrained weights are neither in the torch hub cache nor downloadable "
            f"({type(err).__name__}). Download them once with network access, or give a safetensors path."
        ) from None


def _python(target: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    if pretrained:
        raise ModelError(f"python:{target}: `weights: pretrained` is for timm/torchvision models; give a safetensors "
                         "path")
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise ModelError(f"python:{target} must look like python:package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"python:{target}: cannot import {module_name!r} ({err})") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing (SyntaxError, ...)
        raise ModelError(f"python:{target}: importing {module_name!r} failed ({type(err).__name__}: {err})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ModelError(f"python:{target}: module {module_name!r} has no {attr!r}{_nearest(attr, public)}")
    model = _construct(f"python:{target}", factory, kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"python:{target} returned {type(model).__name__}, not an nn.Module")
    return model


def _construct(ref: str, factory: Any, kwargs: dict[str, Any]) -> Any:
    """Call a model constructor; whatever it raises for these kwargs is the user's to fix, so it is a ModelError."""
    try:
        return factory(**kwargs)
    except TypeError as err:
        if not kwargs:
            raise ModelError(f"{ref} cannot be built without arguments ({err}); give them under `kwargs:`") from None
        raise ModelError(f"{ref} rejected kwargs {kwargs}: {err}") from None
    except _BUILD_ERRORS as err:
        _construct_failed(ref, kwargs, err)


_BUILD_ERRORS = (ValueError, RuntimeError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                 AssertionError, NotImplementedError)


def _construct_failed(ref: str, kwargs: dict[str, Any], err: BaseException) -> None:
    """Raise a ModelError for a constructor that failed on (usually) its kwargs; re-raise anything else."""
    if not isinstance(err, _BUILD_ERRORS):
        raise err
    what = f"with kwargs {kwargs}" if kwargs else "with its default arguments"
    raise ModelError(f"{ref} failed to build {what}: {type(err).__name__}: {err}"
                     + ("; check the kwargs" if kwargs else "")) from None


def _zoo(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    if name not in ZOO:
        raise ModelError(f"the kdgraph zoo has no model {name!r}; available: {', '.join(ZOO)}{_nearest(name, list(ZOO))}")
    if pretrained:
        raise ModelError(f"kdgraph:{name}: zoo models use `weights: builtin`, not `pretrained`")
    return _construct(f"kdgraph:{name}", ZOO[name], kwargs)


def _hf(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    from kdgraph.models import hf

    return hf.build(name, kwargs, pretrained)


def _live(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    raise ModelError(f"live:{name} stands for a module passed from Python: kdgraph.distill(spec, student=..., "
                     "teacher=...)")


MODEL_SOURCES: dict[str, Callable[[str, dict[str, Any], bool], nn.Module]] = {
    "timm": _timm,
    "torchvision": _torchvision,
    "hf": _hf,
    "python": _python,
    "kdgraph": _zoo,
    "live": _live,
}
"""Scheme -> ``build(name, kwargs, pretrained)``: the model references a spec may give."""

SCHEMES = tuple(MODEL_SOURCES)


def _architecture(ref: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    scheme, _, name = ref.partition(":")
    build = MODEL_SOURCES.get(scheme)
    if build is None:
        raise ModelError(f"model reference {ref!r} must start with one of {', '.join(s + ':' for s in SCHEMES)}")
    return build(name, kwargs, pretrained)


def create_model(ref: str, kwargs: dict[str, Any] | None = None, pretrained: bool = False, *,
                 weights: str | None = None) -> nn.Module:
    """Build the model a reference names, with the weights a spec's ``weights:`` would load: None (random init, the
    architecture alone), ``"builtin"`` (the zoo's shipped weights), ``"pretrained"`` (the library's published ones;
    ``pretrained=True`` says the same) or a file path (safetensors, strictly)."""
    if pretrained and weights not in (None, "pretrained"):
        raise ModelError(f"{ref}: pretrained=True and weights={weights!r} name two different weights; give one")
    weights = "pretrained" if pretrained else weights
    kwargs = dict(kwargs or {})
    model = _architecture(ref, kwargs, weights == "pretrained")
    if weights == "builtin":
        scheme, _, name = ref.partition(":")
        path = BUILTIN_DIR / f"{name}.safetensors"
        if scheme != "kdgraph" or not path.is_file():
            shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.safetensors"))
            raise ModelError(f"{ref} has no builtin weights (shipped: {', '.join(shipped) or 'none'})")
        if kwargs:
            raise ModelError(f"builtin weights of {ref} are for its default kwargs; remove `kwargs` or give a path")
        load_weights(model, path, ref)
    elif weights and weights != "pretrained":
        load_weights(model, os.path.expanduser(weights), ref)
    return model


def build_model(ref: str, kwargs: dict[str, Any] | None = None, weights: str | None = None) -> nn.Module:
    """A spec's model: ``create_model(ref, kwargs, weights=weights)``."""
    return create_model(ref, kwargs, weights=weights)
