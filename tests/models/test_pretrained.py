"""`weights: pretrained` for timm and torchvision: cached weights load without the network; without them, offline
(HF_HUB_OFFLINE=1) or with the network out of reach, the failure comes at once (no retry loop: the calls are
counted) and names HF_HUB_OFFLINE=1, the cache and the command that fetches the weights once.

The network is made unreachable deterministically: the connection kdgraph opens to test it, and the download
functions timm (huggingface_hub's ``hf_hub_download``) and torchvision (``torch.hub.download_url_to_file``) call,
are replaced by counters that fail (or, for the cached weights, that fail the test if called)."""

import errno
import socket

import pytest
import torch
from safetensors.torch import save_file

from kdgraph.errors import ModelError
from kdgraph.models import build_model, create_model

FETCH = {"timm:resnet18": "python -c \"import timm; timm.create_model('resnet18', pretrained=True)\"",
         "torchvision:resnet18": "python -c \"import torchvision; torchvision.models.get_model('resnet18', "
                                 "weights='DEFAULT')\""}


@pytest.fixture
def network(tmp_path, monkeypatch):
    """Empty caches in tmp_path, no proxy, and counters on every way to the network; ``network.reach`` says what
    the connection test does ("fail", "open"), ``network.download`` what a download does."""
    import timm.models._hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)

    class Network:
        reach, calls = "fail", {"connect": 0, "hf_hub_download": 0, "download_url_to_file": 0}

    def connect(address, timeout=None, *args, **kwargs):
        Network.calls["connect"] += 1
        if Network.reach == "fail":
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return socket.socket()  # closed at once by the caller

    def download(kind):
        def fail(*args, **kwargs):
            Network.calls[kind] += 1
            raise ConnectionError("connection reset by peer")
        return fail

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", download("hf_hub_download"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download("download_url_to_file"))
    return Network


@pytest.mark.parametrize("ref", ["timm:resnet18", "torchvision:resnet18"])
def test_offline_fails_at_once_naming_the_cache_and_the_fetch(ref, network, tmp_path, monkeypatch):
    # #29: offline, timm retried for about 55 s and then named neither HF_HUB_OFFLINE=1 nor the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        build_model(ref, weights="pretrained")
    assert network.calls == {"connect": 0, "hf_hub_download": 0, "download_url_to_file": 0}
    message = str(err.value)
    cache = tmp_path / "hf" if ref.startswith("timm") else tmp_path / "torch" / "hub" / "checkpoints"
    assert f"which are not in the local cache {cache}, and no download was tried: HF_HUB_OFFLINE=1 is set" in message
    assert f"Fetch them once where there is network access: {FETCH[ref]}" in message, message


@pytest.mark.parametrize("ref", ["timm:resnet18", "torchvision:resnet18"])
def test_an_unreachable_network_is_found_with_one_connection(ref, network, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError) as err:
        build_model(ref, weights="pretrained")
    assert network.calls == {"connect": 1, "hf_hub_download": 0, "download_url_to_file": 0}  # no download, no retry
    message = str(err.value)
    host = "huggingface.co" if ref.startswith("timm") else "download.pytorch.org"
    assert f"{host} cannot be reached (OSError: Network is unreachable)" in message, message
    assert "offline, set HF_HUB_OFFLINE=1 so that kdgraph looks only in the cache" in message
    assert FETCH[ref] in message and str(tmp_path) in message


@pytest.mark.parametrize("ref,download", [("timm:resnet18", "hf_hub_download"),
                                          ("torchvision:resnet18", "download_url_to_file")])
def test_a_download_that_fails_is_tried_once(ref, download, network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    network.reach = "open"  # the host answers, then the download breaks
    with pytest.raises(ModelError) as err:
        build_model(ref, weights="pretrained")
    assert network.calls["connect"] == 1 and network.calls[download] == 1, network.calls
    message = str(err.value)
    assert "the download failed (ConnectionError: connection reset by peer)" in message, message
    assert "HF_HUB_OFFLINE=1" in message and FETCH[ref] in message


def hub_cache(root, repo, filename, tensors):
    """``root/models--ORG--NAME/{refs/main, snapshots/REV/filename}``, as huggingface_hub writes it."""
    revision = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file(tensors, str(folder / "snapshots" / revision / filename))


def test_cached_weights_load_without_the_network(network, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online as far as the variable says: the cache is enough
    torch.manual_seed(1)
    vit = create_model("timm:test_vit")
    hub_cache(tmp_path / "hf", "timm/test_vit.r160_in1k", "model.safetensors",
              {k: v.clone().contiguous() for k, v in vit.state_dict().items()})
    squeeze = create_model("torchvision:squeezenet1_1")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(squeeze.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")

    for ref, saved in (("timm:test_vit", vit), ("torchvision:squeezenet1_1", squeeze)):
        loaded = build_model(ref, weights="pretrained")
        expected = saved.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items()), ref
    assert network.calls == {"connect": 0, "hf_hub_download": 0, "download_url_to_file": 0}
    # a new head for other classes over the cached backbone, as timm does with pretrained=True
    head = build_model("timm:test_vit", {"num_classes": 3}, weights="pretrained")
    assert head.head.out_features == 3 and torch.equal(head.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_kwargs_that_contradict_cached_weights_are_no_download_failure(network, tmp_path, monkeypatch):
    # torchvision's published weights come with their own head: num_classes=3 is refused while building
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(create_model("torchvision:squeezenet1_1").state_dict(),
               tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(ModelError) as err:
        build_model("torchvision:squeezenet1_1", {"num_classes": 3}, weights="pretrained")
    message = str(err.value)
    assert "failed to build with kwargs {'num_classes': 3}: ValueError" in message, message
    assert "the published weights fix the architecture" in message and "download" not in message
