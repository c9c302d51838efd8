"""Model references: ``timm:NAME``, ``torchvision:NAME``, ``hf:ORG/NAME``, ``python:package.module:factory``,
``kdgraph:NAME``.

The scheme before the colon picks a builder from ``MODEL_SOURCES`` (as a name prefix picks a reader in timm); every
builder is ``build(name, kwargs, pretrained) -> nn.Module`` and raises ``ModelError`` for what the user can fix.
``python:`` references import and run user code: only use specs you trust (see docs/spec.md).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Optional

from torch import nn

from kdgraph.errors import ModelError, did_you_mean, suggest
from kdgraph.models import pretrained as pretrained_weights
from kdgraph.models.weights import BUILTIN_DIR, load_weights
from kdgraph.models.zoo import ZOO

__all__ = ["MODEL_SOURCES", "SCHEMES", "build_model", "create_model"]


def _nearest(name: str, choices: list[str]) -> str:
    near = suggest(name, choices, n=3)
    return f"; nearest: {', '.join(near)}" if near else ""


def _parameters(fn: Any) -> list[str]:
    """The keyword names ``fn`` (a function or a class) takes by name, without ``self``, ``*args`` and ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def _kwarg_hint(err: TypeError, factory: Any) -> str:
    """``; did you mean 'num_classes'?`` for a keyword the constructor rejected, from the names it takes: the
    factory's own, and, when the error names a class of the factory's module (``ResNet.__init__() got an unexpected
    keyword argument``: timm and torchvision factories pass ``**kwargs`` on to it), that class's."""
    found = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    if found is None:
        return ""
    names = _parameters(factory)
    owner = re.match(r"(\w+)\.__init__\(\)", str(err))
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    cls = getattr(module, owner.group(1), None) if owner and module else None
    if isinstance(cls, type):
        names += _parameters(cls)
    return did_you_mean(found.group(1), [n for n in dict.fromkeys(names) if n != found.group(1)])


def _timm(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import timm

    if name not in timm.list_models():
        raise ModelError(f"timm has no model {name!r}{_nearest(name, timm.list_models())}")
    published, load = None, dict(kwargs)
    if pretrained:
        published = pretrained_weights.timm_weights(name)
        if published is None:
            raise ModelError(f"timm:{name} has no published weights; remove `weights: pretrained` or give a file")
        cached = pretrained_weights.require(published)
        if cached is not None:  # loaded as a local file: timm would ask the hub first, and retry offline
            overlay = {"file": str(cached), **({"custom_load": False} if published.plain else {})}
            load["pretrained_cfg_overlay"] = {**overlay, **load.get("pretrained_cfg_overlay", {})}
    try:
        return timm.create_model(name, pretrained=pretrained, **load)
    except TypeError as err:
        entry = timm.models.model_entrypoint(name.split(".")[0])
        raise ModelError(f"timm:{name} rejected kwargs {kwargs}: {err}{_kwarg_hint(err, entry)}") from None
    except Exception as err:  # noqa: BLE001 - downloads fail in many ways; all mean "no weights here"
        if published is None or not pretrained_weights.is_network_error(err):
            _construct_failed(f"timm:{name}", kwargs, err)
        raise pretrained_weights.download_failed(published, err) from None


def _torchvision(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise ModelError(f"torchvision has no model {name!r}{_nearest(name, names)}")
    published = None
    if pretrained:
        published = pretrained_weights.torchvision_weights(name)
        if published is None:
            raise ModelError(f"torchvision:{name} has no published weights; remove `weights: pretrained` or give a "
                             "file")
        pretrained_weights.require(published)  # a cached file torchvision finds itself, with no network
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as err:
        builder = torchvision.models.get_model_builder(name)
        raise ModelError(f"torchvision:{name} rejected kwargs {kwargs}: {err}{_kwarg_hint(err, builder)}") from None
    except Exception as err:  # noqa: BLE001
        if published is None or not pretrained_weights.is_network_error(err):
            _construct_failed(f"torchvision:{name}", kwargs, err, pretrained=published is not None)
        raise pretrained_weights.download_failed(published, err) from None


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
        raise ModelError(f"{ref} rejected kwargs {kwargs}: {err}{_kwarg_hint(err, factory)}") from None
    except _BUILD_ERRORS as err:
        _construct_failed(ref, kwargs, err)


_BUILD_ERRORS = (ValueError, RuntimeError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                 AssertionError, NotImplementedError)


def _construct_failed(ref: str, kwargs: dict[str, Any], err: BaseException, pretrained: bool = False) -> None:
    """Raise a ModelError for a constructor that failed on (usually) its kwargs; re-raise anything else.
    ``pretrained``: the published weights fix the architecture (torchvision's their head too), which the kwargs
    may contradict."""
    if not isinstance(err, _BUILD_ERRORS):
        raise err
    what = f"with kwargs {kwargs}" if kwargs else "with its default arguments"
    raise ModelError(f"{ref} failed to build {what}: {type(err).__name__}: {err}"
                     + ("; check the kwargs" if kwargs else "")
                     + ("; with `weights: pretrained` the published weights fix the architecture (torchvision's "
                        "their classifier too): drop those kwargs, use timm (which replaces the head), or give a "
                        "weights file" if pretrained and kwargs else "")) from None


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
