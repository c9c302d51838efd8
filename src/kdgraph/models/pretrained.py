"""``weights: pretrained`` for ``timm:`` and ``torchvision:``: the published weights from the local cache, else one
download by the library; offline, a failure at once that names ``HF_HUB_OFFLINE=1``, the cache and the command that
fetches the weights once.

Why kdgraph looks first: without a network, timm spent about a minute failing (huggingface_hub retries each request
five times with back-off, and timm asks for two files), and the error named neither the cache nor offline mode.
Now the cached file is found here (timm then loads it as a local file, torchvision finds it itself); when it is not
there, ``HF_HUB_OFFLINE=1`` stops at once without touching the network, and otherwise one connection to the host
that serves the weights (:func:`reachable`, a few seconds at most) tells whether a download can work at all. A
proxy (``HTTPS_PROXY``) hides that answer, so behind one the library tries as before.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from kdgraph.errors import ModelError

__all__ = ["Published", "timm_weights", "torchvision_weights", "offline", "reachable", "require", "unavailable",
           "download_failed", "is_network_error"]

PROBE_TIMEOUT = 5.0
"""Seconds one connection to the weights' host may take before kdgraph calls it unreachable."""

_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


@dataclass(frozen=True)
class Published:
    """Where the published weights of ``ref`` come from: ``what`` (a hub repository or a URL), the ``url`` a download
    reads, the local ``cache`` folder (``cache_env`` moves it), the file there if it exists (``cached``), whether that
    file is a plain state dict timm can load (``plain``: hub files are; a URL may be a foreign format such as .npz),
    and the ``fetch`` command that downloads them once."""

    ref: str
    what: str
    url: str
    cache: Path
    cache_env: str
    cached: Optional[Path]
    fetch: str
    plain: bool = True


def _hf_cache() -> Path:
    from kdgraph.models.hf import cache_dir

    return Path(cache_dir())


def _hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _in_hub_cache(url: str) -> Optional[Path]:
    """The file torch.hub keeps for ``url`` (``TORCH_HOME/hub/checkpoints/NAME``), when it is there."""
    path = _hub_dir() / os.path.basename(urlparse(url).path)
    return path if path.is_file() else None


def timm_weights(name: str) -> Optional[Published]:
    """The published weights timm loads for ``name`` (its default tag); None when timm lists none."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if "open_clip_pytorch_model.bin" in names:
            names.insert(0, "open_clip_model.safetensors")
        found = None
        for filename in names:
            hit = try_to_load_from_cache(repo, filename, cache_dir=str(_hf_cache()), revision=revision or None)
            if isinstance(hit, str):
                found = Path(hit)
                break
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return Published(f"timm:{name}", f"{repo} on the Hugging Face hub", f"{endpoint}/{repo}", _hf_cache(),
                         "HF_HUB_CACHE", found, fetch)
    if cfg is not None and cfg.url:
        return Published(f"timm:{name}", cfg.url, cfg.url, _hub_dir(), "TORCH_HOME", _in_hub_cache(cfg.url), fetch,
                         plain=not cfg.custom_load)
    return None


def torchvision_weights(name: str) -> Optional[Published]:
    """The weights ``weights="DEFAULT"`` loads for torchvision model ``name``; None when it has none."""
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, KeyError, AttributeError):
        return None
    fetch = f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\""
    return Published(f"torchvision:{name}", url, url, _hub_dir(), "TORCH_HOME", _in_hub_cache(url), fetch)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value: nothing is tried over the network, for timm and torchvision alike."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable(url: str) -> Optional[str]:
    """None when one connection to ``url``'s host opens within ``PROBE_TIMEOUT`` seconds (or a proxy is set, which
    hides the answer); else why not (``gaierror: Name or service not known``)."""
    if any(os.environ.get(name) for name in _PROXIES):
        return None
    parts = urlparse(url)
    try:
        socket.create_connection((parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)),
                                 timeout=PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def unavailable(published: Published, why: str) -> ModelError:
    """The error for weights that are neither cached nor downloadable: the cache, HF_HUB_OFFLINE=1, the fetch."""
    return ModelError(
        f"{published.ref}: `weights: pretrained` needs its published weights ({published.what}), which are not in "
        f"the local cache {published.cache}, and {why}. Fetch them once where there is network access: "
        f"{published.fetch} (they land in that cache: copy it here, or point {published.cache_env} at a copy), then "
        "run again" + ("" if offline() else "; offline, set HF_HUB_OFFLINE=1 so that kdgraph looks only in the cache")
        + ". Or give `weights: path/to/file.safetensors`")


def is_network_error(err: BaseException) -> bool:
    """Whether a failure while loading published weights came from fetching them (a socket, HTTP, the hub), not
    from building the model (a ValueError for kwargs that contradict the weights)."""
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("huggingface_hub", "httpx", "urllib3",
                                                                            "requests")


def download_failed(published: Published, err: BaseException) -> ModelError:
    """The error for a download the library tried and lost (the network went away, the host refused)."""
    detail = (str(err).strip().splitlines() or [""])[0][:200]
    return unavailable(published, f"the download failed ({type(err).__name__}{': ' + detail if detail else ''})")


def require(published: Published) -> Optional[Path]:
    """The cached file of ``published`` (None: not cached, and a download looks possible, so the library may try);
    a ``ModelError`` at once when it is not cached and the network is off limits (``HF_HUB_OFFLINE=1``) or out of
    reach."""
    if published.cached is not None:
        return published.cached
    if offline():
        raise unavailable(published, "no download was tried: HF_HUB_OFFLINE=1 is set")
    why = reachable(published.url)
    if why is not None:
        raise unavailable(published, f"{urlparse(published.url).hostname} cannot be reached ({why})")
    return None
