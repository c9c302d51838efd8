"""Self-distillation (``teacher: self``): auxiliary heads on shallow student maps and their three terms each; and
the student layer k-NN / linear-probe evaluation reads as its embedding."""

from __future__ import annotations

from typing import Optional

from torch import nn

from kdgraph.align.aux_heads import AuxHead
from kdgraph.errors import SpecError
from kdgraph.graph.lookup import layer
from kdgraph.graph.terms import Term, TermKind, adapter_key
from kdgraph.spec.schema import Spec
from kdgraph.trace import LayerMap

__all__ = ["head_terms", "embedding_layer", "last_linear"]


def last_linear(model: nn.Module) -> Optional[tuple[str, nn.Linear]]:
    """The model's last ``nn.Linear`` (its classifier, for the models kdgraph knows), with its name."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _default_deep_layers(student: nn.Module, student_map: LayerMap) -> tuple[str, str, nn.Linear]:
    """The deepest stage's map (last map layer with more than one position) and the classifier's input."""
    classifier = last_linear(student)
    if classifier is None:
        raise SpecError("self-distillation needs a student with a final nn.Linear classifier", key="student")
    maps = [info.name for info in student_map.layers if info.layout == "map" and info.shape[1] * info.shape[2] > 1]
    if not maps:
        raise SpecError("the student has no (C, H, W) feature map to attach heads to", key="self_distill.heads")
    return maps[-1], f"{classifier[0]}:input", classifier[1]


def head_terms(spec: Spec, student: nn.Module, student_map: LayerMap, adapters: nn.ModuleDict) -> list[Term]:
    """An auxiliary head per ``self_distill.heads`` layer (into ``adapters``, keyed ``head:LAYER``) and its three
    terms: soft CE to the deepest logits, CE on the labels, feature distance to the deepest feature."""
    sd = spec.self_distill
    deep_map, deep_feature, classifier = _default_deep_layers(student, student_map)
    deep_map = layer(student_map, sd.deep_map or deep_map, "self_distill.deep_map", spec, ("self_distill", "deep_map"))
    feature = layer(student_map, sd.deep_feature or deep_feature, "self_distill.deep_feature", spec,
                    ("self_distill", "deep_feature"))
    terms = []
    for i, name in enumerate(sd.heads):
        key, path = f"self_distill.heads[{i}]", ("self_distill", "heads", i)
        info = layer(student_map, name, key, spec, path)
        if info.layout != "map":
            raise SpecError(f"heads attach to (C, H, W) maps; {name} is {info.layout} {info.shape}", key=key,
                            line=spec.line_of(*path))
        head = adapter_key(f"head:{name}")
        if head in adapters:
            raise SpecError(f"self_distill.heads names {name} twice", key=key, line=spec.line_of(*path))
        adapters[head] = AuxHead(info.shape, deep_map.shape, classifier.out_features, feature.shape[-1],
                                 kind=sd.head, attention=sd.attention)
        common = dict(student_tap=info.name, teacher_tap=feature.name, index=i, adapter=head)
        terms.append(Term(label=f"head:{name}/soft", kind=TermKind.HEAD_SOFT, weight=sd.alpha,
                          params={"temperature": sd.temperature, "t_squared": sd.t_squared}, **common))
        terms.append(Term(label=f"head:{name}/ce", kind=TermKind.HEAD_CE, weight=1 - sd.alpha, **common))
        if sd.feature_weight > 0:
            terms.append(Term(label=f"head:{name}/feature", kind=TermKind.HEAD_FEATURE, weight=sd.feature_weight,
                              **common))
    return terms


def embedding_layer(spec: Spec, student: nn.Module, student_map: LayerMap) -> str:
    """The student layer k-NN / linear-probe evaluation reads: ``eval.embedding``, else its last Linear's input."""
    if spec.eval.embedding:
        return layer(student_map, spec.eval.embedding, "eval.embedding", spec, ("eval", "embedding")).name
    classifier = last_linear(student)
    if classifier is not None:
        return f"{classifier[0]}:input"
    if any(m != "top1" for m in spec.eval.metrics):
        raise SpecError("the student has no Linear layer whose input could serve as the embedding for "
                        f"{', '.join(spec.eval.metrics)}; set eval.embedding to a layer `kdgraph inspect` lists",
                        key="eval.embedding", line=spec.line_of("eval"))
    return "output"
