"""``hf:ORG/NAME``: Hugging Face vision models through the ``transformers`` Auto classes, from local files only.

kdgraph never downloads at run time: a hub name is read from the local Hugging Face cache (``HF_HUB_CACHE``, by
default ``~/.cache/huggingface/hub``), and ``hf:/path/to/folder`` reads a folder written by ``save_pretrained``. A
model that is not there is a ``ModelError`` naming it and the command that fetches it while online.

The model is the transformers module itself (its layer names are the ones ``kdgraph inspect`` prints and
``student.safetensors`` loads back with ``from_pretrained``'s class), with one forward hook that returns a plain
tensor instead of a ``ModelOutput``: the logits of an image classifier, else the pooled output (or the first token
of the last hidden state) of a backbone such as DINOv2 or a CLIP vision tower. transformers 5 has no torch.fx
support, so kdgraph traces these models with forward hooks (module names are the tap names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.errors import ModelError

__all__ = ["build", "find_file", "cache_dir", "is_local", "plain_output"]


def cache_dir() -> str:
    """The Hugging Face hub cache, read now (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def is_local(name: str) -> bool:
    """``hf:./folder``, ``hf:/abs/folder``, ``hf:~/folder``: a folder written by ``save_pretrained``."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir()


def find_file(name: str, filename: str) -> Optional[str]:
    """The local path of ``filename`` of model ``name`` (a folder or the hub cache), or None when it is not there."""
    if is_local(name):
        path = Path(name).expanduser() / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, filename, cache_dir=cache_dir())
    return found if isinstance(found, str) else None


def _missing(name: str, what: str) -> ModelError:
    if is_local(name):
        return ModelError(f"hf:{name}: the folder has no {what}; write it with model.save_pretrained(folder) (and "
                          "the image processor's save_pretrained for preprocessor_config.json)")
    return ModelError(
        f"hf:{name}: {what} is not in the local Hugging Face cache ({cache_dir()}); kdgraph never downloads at run "
        f"time. While online, fetch it once with `hf download {name}` (huggingface_hub's command line), then run "
        "again (with HF_HUB_OFFLINE=1 offline); or point hf: at a folder written by save_pretrained "
        "(hf:/path/to/folder)")


def plain_output(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: a transformers ``ModelOutput`` as one tensor (logits, else pooled output, else the first
    token of the last hidden state); anything else unchanged."""
    if torch.is_tensor(output):
        return output
    for key in ("logits", "image_embeds", "pooler_output"):
        value = getattr(output, key, None)
        if torch.is_tensor(value):
            return value
    hidden = getattr(output, "last_hidden_state", None)
    if torch.is_tensor(hidden):
        return hidden[:, 0] if hidden.dim() == 3 else hidden
    return output


def _model_class(transformers: Any, config: Any) -> Any:
    """The Auto class for an image classifier; for a model with a vision tower (CLIP, SigLIP) its vision model;
    else ``AutoModel`` (a backbone)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    if config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and any(
            a.endswith("ForImageClassification") for a in (config.architectures or [])):
        return transformers.AutoModelForImageClassification
    if getattr(config, "vision_config", None) is not None:
        for arch in config.architectures or []:
            cls = getattr(transformers, arch.removesuffix("Model") + "VisionModel", None)
            if cls is not None:
                return cls
    return transformers.AutoModel


def build(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    """``AutoModel*.from_pretrained`` (``weights: pretrained``) or ``from_config`` (random init), local files only;
    ``kwargs`` update the config (``num_labels: 10`` gives a fresh 10-class head over the pretrained backbone)."""
    try:
        import transformers
    except ImportError:
        raise ModelError(f"hf:{name} needs the transformers package: pip install 'kdgraph[hf]' (or pip install "
                         "transformers)") from None
    if not name:
        raise ModelError("hf: needs a model: hf:ORG/NAME (from the local Hugging Face cache) or hf:/path/to/folder")
    if find_file(name, "config.json") is None:
        raise _missing(name, "its config.json")
    source = str(Path(name).expanduser()) if is_local(name) else name
    where = {} if is_local(name) else {"cache_dir": cache_dir()}
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # kdgraph prints its own lines; no per-shard loading bars
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True, **where)
        for key, value in kwargs.items():
            setattr(config, key, value)
        cls = _model_class(transformers, config)
        if pretrained:
            mismatched = "num_labels" in kwargs  # a new head over the pretrained backbone, as timm does
            model = cls.from_pretrained(source, config=config, local_files_only=True,
                                        ignore_mismatched_sizes=mismatched, **where)
        else:
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except (OSError, EnvironmentError) as err:
        raise _missing(name, "its weights" if pretrained else "its config") from err
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ModelError(f"hf:{name} failed to build with kwargs {kwargs}: {type(err).__name__}: {err}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.register_forward_hook(plain_output)
    return model
