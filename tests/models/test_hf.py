"""``hf:ORG/NAME``: Hugging Face vision models from the local cache only, built from a config in the test."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdgraph.errors import ModelError
from kdgraph.models import build_model
from kdgraph.models.preprocess import published_preprocessing

pytest.importorskip("transformers", reason="the hf: model source needs transformers (pip install 'kdgraph[hf]')")


def test_pretrained_from_the_cache_gives_the_models_logits(tiny_hf):
    model = build_model("hf:acme/tiny-vit", {}, "pretrained")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tiny_hf(x).logits)  # a plain tensor, not a ModelOutput


def test_random_init_reads_only_the_config_and_kwargs_update_it(tiny_hf):
    model = build_model("hf:acme/tiny-vit", {"num_labels": 3})
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    fresh = build_model("hf:acme/tiny-vit", {"num_labels": 3}, "pretrained")  # pretrained backbone, new head
    torch.testing.assert_close(fresh.vit.embeddings.patch_embeddings.projection.weight,
                               tiny_hf.vit.embeddings.patch_embeddings.projection.weight)


def test_local_folder(tmp_path, tiny_hf):
    tiny_hf.save_pretrained(tmp_path / "mine")
    model = build_model(f"hf:{tmp_path / 'mine'}", {}, "pretrained")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), tiny_hf(x).logits)


def test_preprocessing_comes_from_preprocessor_config(tiny_hf):
    pre = published_preprocessing("hf:acme/tiny-vit")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.size == (32, 32)


def test_missing_cache_names_the_model_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as err:
        build_model("hf:facebook/dinov2-small", {}, "pretrained")
    text = str(err.value)
    assert "hf:facebook/dinov2-small" in text and "not in the local Hugging Face cache" in text
    assert "hf download facebook/dinov2-small" in text and "never downloads" in text


def test_inspect_a_cached_model(tiny_hf):
    from kdgraph.cli.main import main

    out = CliRunner().invoke(main, ["inspect", "hf:acme/tiny-vit", "--input-shape", "3,32,32", "--json"])
    assert out.exit_code == 0, out.output
    layers = json.loads(out.output[out.output.index("\n[") + 1:])  # after the fx fallback warning
    names = [layer["name"] for layer in layers]
    assert "vit.layers.1" in names and "classifier" in names
    assert next(layer for layer in layers if layer["name"] == "classifier")["shape"] == [10]


def test_one_epoch_train_distils_a_cached_hf_teacher(tiny_hf, tmp_path, monkeypatch):
    from kdgraph.cli.main import main

    monkeypatch.chdir(tmp_path)
    doc = {"name": "hf", "teacher": {"model": "hf:acme/tiny-vit", "weights": "pretrained"},
           "student": {"model": "hf:acme/tiny-vit", "kwargs": {"num_hidden_layers": 1}},
           "data": {"dataset": "synthetic", "batch_size": 16, "synthetic": {"train_size": 64}},
           "distill": {"logits": {}, "pairs": [{"student": "vit.layers.0", "teacher": "vit.layers.1"}]},
           "train": {"epochs": 1}, "runtime": {"device": "cpu"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    out = CliRunner().invoke(main, ["inspect", "s.yaml"])
    assert out.exit_code == 0, out.output
    assert "input: teacher reads 3×32×32 (from preprocessor_config.json): re-normalise mean (0, 0, 0) → (0.5, " \
           "0.5, 0.5)" in out.output
    out = CliRunner().invoke(main, ["train", "s.yaml", "--quiet"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (tmp_path / "runs/hf/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1 and "loss/pair:vit.layers.0->vit.layers.1" in rows[-1]
    from transformers import ViTForImageClassification
    from safetensors.torch import load_file

    student = build_model("hf:acme/tiny-vit", {"num_hidden_layers": 1})
    student.load_state_dict(load_file(str(tmp_path / "runs/hf/student.safetensors")), strict=True)
    assert isinstance(student, ViTForImageClassification)
