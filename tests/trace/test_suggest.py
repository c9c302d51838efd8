"""Pair suggestions: equal stride for conv nets, depth fractions for transformers, YAML that pastes into a spec."""

import pytest
import yaml

from kdgraph.models import create_model
from kdgraph.spec.schema import PairSpec
from kdgraph.trace import LayerInfo, LayerMap, trace_model
from kdgraph.trace.suggest import block_list, format_pairs_yaml, stage_layers, suggest_pairs


def traced(ref, shape, **kwargs):
    return trace_model(create_model(ref, kwargs), shape, ref)


@pytest.fixture(scope="module")
def zoo():
    return traced("kdgraph:fmnist_resnet", (1, 28, 28)), traced("kdgraph:fmnist_cnn", (1, 28, 28))


def names(pairs):
    return [(p["teacher"], p["student"]) for p in pairs]


def test_resnet34_to_resnet18_pairs_the_four_stages():
    shape = (3, 64, 64)
    teacher, student = traced("timm:resnet34", shape), traced("timm:resnet18", shape)
    assert [i.name for i in stage_layers(student)][:4] == ["layer1", "layer2", "layer3", "layer4"]
    pairs = suggest_pairs(teacher, student)
    assert names(pairs) == [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    assert [teacher[p["teacher"]].stride for p in pairs] == [4, 8, 16, 32]


def test_vit_small_to_vit_tiny_pairs_blocks_at_depth_fractions():
    shape = (3, 224, 224)
    teacher = traced("timm:vit_small_patch16_224", shape)
    student = traced("timm:vit_tiny_patch16_224", shape)
    assert len(block_list(student)) == 12
    pairs = suggest_pairs(teacher, student)
    assert names(pairs) == [(f"blocks.{i}", f"blocks.{i}") for i in (2, 5, 8, 11)]


def test_zoo_pair_matches_equal_strides_and_takes_the_last_layer(zoo):
    teacher, student = zoo
    # teacher: stem/layer1 stride 1, layer2 stride 2, layer3 stride 4; student: block1 stride 2 (it pools),
    # block2 and block3 stride 4. layer1 has no stride-1 partner; block3 is the last of its stride group.
    assert [(i.name, i.stride) for i in stage_layers(student)] == [("block1", 2), ("block2", 4), ("block3", 4)]
    # the global pool (a 1×1 map, "stride" 28 in both) is not a stage: no pool ↔ pool pair
    assert names(suggest_pairs(teacher, student)) == [("layer2", "block1"), ("layer3", "block3")]


def test_yaml_pastes_into_a_spec(zoo):
    teacher, student = zoo
    text = format_pairs_yaml(suggest_pairs(teacher, student), teacher, student)
    assert "stride 2" in text and "paired by equal stride" in text
    doc = yaml.safe_load(text)
    specs = [PairSpec.model_validate(p) for p in doc["distill"]["pairs"]]
    assert [(s.teacher, s.student) for s in specs] == [("layer2", "block1"), ("layer3", "block3")]


def _tokens(prefix, depth, dim, extra=()):
    layers = [LayerInfo("patch_embed", "PatchEmbed", (16, dim), dim, None, "tokens"),
              LayerInfo("patch_embed.proj", "Conv2d", (dim, 4, 4), dim, 8, "map")]
    for i in range(depth):
        layers += [LayerInfo(f"{prefix}.{i}.mlp", "Mlp", (17, dim), dim, None, "tokens"),
                   LayerInfo(f"{prefix}.{i}", "Block", (17, dim), dim, None, "tokens")]
    layers += [LayerInfo(prefix, "Sequential", (17, dim), dim, None, "tokens"),
               LayerInfo("head", "Linear", (10,), 10, None, "vector"), *extra]
    return LayerMap(f"vit{depth}", "hooks", (3, 32, 32), layers)


def test_depth_fractions_with_unequal_depths():
    pairs = suggest_pairs(_tokens("blocks", 12, 64), _tokens("layers", 6, 32))
    assert names(pairs) == [("blocks.2", "layers.1"), ("blocks.5", "layers.2"), ("blocks.8", "layers.4"),
                            ("blocks.11", "layers.5")]
    # fewer than four units: one pair per unit of the shallower model, no duplicates
    assert names(suggest_pairs(_tokens("blocks", 12, 64), _tokens("blocks", 2, 32))) == [
        ("blocks.5", "blocks.0"), ("blocks.11", "blocks.1")]


def test_conv_teacher_transformer_student_uses_depth_fractions():
    conv = LayerMap("cnn", "hooks", (3, 32, 32), [
        LayerInfo(f"stage{i}.conv", "Conv2d", (8 * i, 32 // 2 ** i, 32 // 2 ** i), 8 * i, 2 ** i, "map")
        for i in range(1, 5)] + [
        LayerInfo(f"stage{i}", "Sequential", (8 * i, 32 // 2 ** i, 32 // 2 ** i), 8 * i, 2 ** i, "map")
        for i in range(1, 5)])
    pairs = suggest_pairs(conv, _tokens("blocks", 8, 32))
    assert names(pairs) == [("stage1", "blocks.1"), ("stage2", "blocks.3"), ("stage3", "blocks.5"),
                            ("stage4", "blocks.7")]


def test_no_common_stride_gives_no_pairs_and_says_so():
    a = LayerMap("a", "hooks", (1, 8, 8), [LayerInfo("s.0", "Conv2d", (4, 8, 8), 4, 1, "map"),
                                            LayerInfo("s", "Sequential", (4, 8, 8), 4, 1, "map")])
    b = LayerMap("b", "hooks", (1, 8, 8), [LayerInfo("t.0", "Conv2d", (4, 4, 4), 4, 2, "map"),
                                            LayerInfo("t", "Sequential", (4, 4, 4), 4, 2, "map")])
    assert suggest_pairs(a, b) == []
    assert yaml.safe_load(format_pairs_yaml([], a, b)) == {"distill": {"pairs": []}}
