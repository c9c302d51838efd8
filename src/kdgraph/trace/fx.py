"""torch.fx strategy: timm's tracer setup, layer names, shape propagation, feature graphs.

One job, like timm's ``_features_fx.py``: trace a model with torchvision's
``NodePathTracer`` configured with timm's leaf modules and autowrapped
functions, then (a) describe every node with one probe forward (on the meta
device, see ``kdgraph.trace.probe``), or (b) rewrite the graph so that the
tapped nodes are its outputs.

A ``forward(self, x, feats=False)`` whose flag picks what to return cannot be
traced as it is: fx would have to branch on a traced value. kdgraph only ever
calls a model with its input, so such arguments can be fixed at their defaults
(fx's ``concrete_args``); when the plain trace fails, the trace is tried once
more with every plain-valued default fixed (``fixable_defaults``), and the
layer map records which were (``LayerMap.fixed_args``) so the extractor traces
the same graph.

Names are torchvision's ``get_graph_node_names`` names (eval mode), plus every
submodule path that owns nodes; a submodule's output is its last node in
execution order, which is also how torchvision's ``create_feature_extractor``
resolves such a prefix. Excluded from the vocabulary, on purpose:

- placeholders (the model input; tap ``NAME:input`` of the first layer instead);
- ``get_attr`` nodes: parameters and buffers are weights, not activations, and
  have no batch dim;
- the ``output`` node (the extractor returns it as ``"output"``).

Why not call ``create_feature_extractor`` directly: it maps one node per query
string, so it cannot return ``NAME:input`` (another node's value), the same node
under two names, or the model's own output structure (logits, tuples) beside the
taps. ``build_feature_graph`` does the same rewrite (output node replaced, dead
code eliminated, train and eval graphs in torchvision's ``DualGraphModule``)
with those three additions.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import DualGraphModule, NodePathTracer

from kdgraph.trace.layer_map import LayerInfo, LayerMap, UnknownLayerError, describe, preserved_modes, split_name
from kdgraph.trace.probe import probe

__all__ = [
    "tracer_kwargs",
    "fixable_defaults",
    "trace_graph",
    "NodeIndex",
    "fx_layer_map",
    "build_feature_graph",
]

# Node ops that are never layer names (see the module docstring for why).
_NOT_LAYERS = ("placeholder", "get_attr", "output")

# Defaults fx can fix with ``concrete_args``: plain values that it can compare against at a call, as it does.
_FIXABLE = (bool, int, float, str, type(None))


def tracer_kwargs() -> dict[str, Any]:
    """``NodePathTracer`` arguments: timm's leaf modules and autowrap functions, plus
    torchvision's defaults (torchvision.ops modules are leaves, ``math`` and
    ``torchvision.ops`` are autowrapped).

    timm's lists are why ``tf_efficientnet_lite0`` traces here but not with plain
    ``symbolic_trace``: e.g. its same-padding layers compute their padding from
    the input size with ``max``, which fx cannot trace, so timm registers them as
    leaves. timm is imported lazily (it is slow to import); without it only
    torchvision's defaults apply. Register extra leaves for your own models with
    ``timm.layers.register_notrace_module`` / ``register_notrace_function``.
    """
    leaf_modules: list[type] = [
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module)
    ]
    autowrap_functions: list[Any] = []
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - timm is a dependency, but tracing works without it
        pass
    else:
        leaf_modules += [m for m in get_notrace_modules() if m not in leaf_modules]
        # timm registers a few names as strings; the tracer only takes callables.
        autowrap_functions = [f for f in get_notrace_functions() if callable(f)]
    return {
        "leaf_modules": leaf_modules,
        "autowrap_modules": (math, torchvision.ops),
        "autowrap_functions": autowrap_functions,
    }


def fixable_defaults(model: nn.Module) -> dict[str, Any]:
    """The ``forward`` parameters after the input whose default is a plain value (bool, int, float, str, None).

    Tensors are never fixed (a tensor default is data, not an option); nor are
    ``*args``/``**kwargs`` or values fx could not check (lists, objects).
    """
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):  # a forward without a signature (a builtin): nothing to fix
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default
        for p in params
        if p.kind in kinds and p.default is not inspect.Parameter.empty and isinstance(p.default, _FIXABLE)
    }


def _drop_guards(graph: fx.Graph, fixed: dict[str, Any]) -> None:
    """Erase the placeholder fx keeps for each fixed argument, and the checks hanging off it.

    fx adds ``NAME_1`` placeholders and asserts at every call that they still
    hold the fixed values. kdgraph calls its graphs with the input alone, so the
    checks cannot fail; left in, they would be listed as layers (``eq``,
    ``_assert``), and the graph would accept arguments it ignores.
    """
    targets = {f"{name}_1" for name in fixed}
    doomed: set[fx.Node] = set()
    todo = [node for node in graph.nodes if node.op == "placeholder" and node.target in targets]
    while todo:
        node = todo.pop()
        if node not in doomed:
            doomed.add(node)
            todo.extend(node.users)
    for node in reversed(list(graph.nodes)):  # users before what they use
        if node in doomed:
            graph.erase_node(node)


def trace_graph(
    model: nn.Module, training: bool = False, fixed: dict[str, Any] | None = None
) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """Trace ``model`` in train or eval mode, with the ``fixed`` arguments at those values; returns the graph and
    node -> layer name.

    Every module's own ``training`` flag is restored afterwards. Raises whatever
    fx raises (``TraceError``, ``TypeError``, ...) when the model is not traceable.
    """
    with preserved_modes(model):
        model.train(training)
        tracer = NodePathTracer(**tracer_kwargs())
        graph = tracer.trace(model, concrete_args=dict(fixed) if fixed else None)
    if fixed:
        _drop_guards(graph, fixed)
    alive = set(graph.nodes)
    qualnames = {node: name for node, name in tracer.node_to_qualname.items() if node in alive}
    names = list(qualnames.values())
    if len(set(names)) != len(names):
        # torchvision treats this as impossible too; refuse rather than guess.
        raise RuntimeError(f"fx tracing of {type(model).__name__} produced duplicate node names")
    return graph, qualnames


def _under(name: str | None, prefix: str) -> bool:
    return name is not None and name.startswith(prefix + ".")


class NodeIndex:
    """Resolves layer names to the nodes of one traced graph.

    Layer names are node names and submodule prefixes; see the module docstring.
    Built the same way for the layer map (eval graph) and for each graph an
    extractor rewrites, so one name means the same node in both.
    """

    def __init__(self, graph: fx.Graph, qualnames: dict[fx.Node, str]):
        self.qualnames = qualnames
        self.nodes: dict[str, fx.Node] = {}
        self.prefix_last: dict[str, fx.Node] = {}
        self.prefix_nodes: dict[str, list[fx.Node]] = {}
        for node in graph.nodes:
            name = qualnames.get(node)
            if name is None or node.op in _NOT_LAYERS:
                continue
            self.nodes[name] = node
            parts = name.split(".")
            for k in range(1, len(parts)):
                prefix = ".".join(parts[:k])
                self.prefix_last[prefix] = node
                self.prefix_nodes.setdefault(prefix, []).append(node)

    def entries(self) -> Iterator[tuple[str, fx.Node, bool]]:
        """``(name, output node, is_prefix)`` in execution order.

        A submodule is listed right after its last node, inner before outer
        (``layer4.1.act2``, ``layer4.1``, ``layer4``).
        """
        ends: dict[fx.Node, list[str]] = {}
        for prefix, node in self.prefix_last.items():
            ends.setdefault(node, []).append(prefix)
        for name, node in self.nodes.items():
            yield name, node, False
            for prefix in sorted(ends.get(node, ()), key=lambda p: -p.count(".")):
                yield prefix, node, True

    def output(self, name: str) -> fx.Node | None:
        """The node whose value is layer ``name`` (a node, or a submodule's last node)."""
        if name in self.nodes:
            return self.nodes[name]
        return self.prefix_last.get(name)

    def input(self, name: str) -> fx.Node | None:
        """The node feeding layer ``name``: the first non-weight input of the node,
        or, for a submodule, the first such input coming from outside it."""
        if name in self.nodes:
            for arg in self.nodes[name].all_input_nodes:
                if arg.op != "get_attr":
                    return arg
            return None
        for node in self.prefix_nodes.get(name, ()):
            for arg in node.all_input_nodes:
                if arg.op != "get_attr" and not _under(self.qualnames.get(arg), name):
                    return arg
        return None

    def resolve(self, name: str) -> fx.Node | None:
        """The node for ``NAME``, ``NAME:output`` or ``NAME:input``; None if absent."""
        base, suffix = split_name(name)
        return self.input(base) if suffix == "input" else self.output(base)


def _kind(node: fx.Node, prefix: str | None, root: nn.Module) -> str:
    if prefix is not None:
        try:
            return type(root.get_submodule(prefix)).__name__
        except AttributeError:
            return "Module"
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)  # call_method: the method name


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once, keeping only a description of every node's value (the output node's included)."""

    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...]):
        super().__init__(gm)
        self.input_shape = input_shape
        self.described: dict[fx.Node, tuple[tuple[int, ...], int | None, int | None, str]] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.described[n] = describe(value, self.input_shape)
        return value


def fx_layer_map(model: nn.Module, input_shape: tuple[int, ...], model_name: str = "model") -> LayerMap:
    """Trace in eval mode and describe every layer with ONE probe of the graph (see ``kdgraph.trace.probe``).

    When the plain trace or its probe fails and ``forward`` has defaults that can be
    fixed, both are tried once more with those fixed. Raises on any remaining
    failure (``trace_model`` then falls back to hooks).
    """
    try:
        return _traced_layer_map(model, input_shape, model_name, {})
    except Exception:  # noqa: BLE001 - a flag argument (``feats=False``) is the usual reason; fix it and retry
        fixed = fixable_defaults(model)
        if not fixed:
            raise
    return _traced_layer_map(model, input_shape, model_name, fixed)


def _traced_layer_map(
    model: nn.Module, input_shape: tuple[int, ...], model_name: str, fixed: dict[str, Any]
) -> LayerMap:
    graph, qualnames = trace_graph(model, training=False, fixed=fixed)
    index = NodeIndex(graph, qualnames)
    gm = fx.GraphModule(model, graph)  # shares the model's submodules and parameters

    def describe_nodes(x: torch.Tensor) -> dict[fx.Node, tuple]:
        recorder = _ShapeRecorder(gm, input_shape)
        recorder.run(x)
        return recorder.described

    described = probe(gm, input_shape, describe_nodes)
    layers: list[LayerInfo] = []
    inputs: dict[str, LayerInfo] = {}
    for name, node, is_prefix in index.entries():
        kind = _kind(node, name if is_prefix else None, model)
        layers.append(LayerInfo(name, kind, *described[node]))
        source = index.input(name)
        if source is not None and source in described:
            inputs[name] = LayerInfo(f"{name}:input", kind, *described[source])
    out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    output = LayerInfo("output", type(model).__name__, *described[out_node])
    return LayerMap(model_name, "fx", input_shape, layers, inputs, output=output, fixed_args=fixed)


def _match_modes(gm: nn.Module, model: nn.Module) -> None:
    """Give ``gm`` and its container modules the training flags of their originals,
    without touching the original (leaf) modules it shares with ``model``."""
    originals = {id(m) for m in model.modules()}
    for name, sub in gm.named_modules():
        if id(sub) in originals:
            continue
        try:
            sub.training = model.get_submodule(name).training if name else model.training
        except AttributeError:
            sub.training = model.training


_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _writes_in_place(user: fx.Node, node: fx.Node, root: nn.Module) -> bool:
    """Whether ``user`` overwrites its input ``node`` in place: a module built with ``inplace=True`` (a ResNet's
    ``ReLU(inplace=True)``), ``F.relu(x, inplace=True)``, an in-place method (``x.relu_()``, ``x.add_(y)``) or
    operator (``x += y``) on it."""
    first = user.args[0] if user.args else None
    if user.op == "call_module":
        try:
            return bool(getattr(root.get_submodule(str(user.target)), "inplace", False)) and first is node
        except AttributeError:
            return False
    if user.op == "call_method":
        return str(user.target).endswith("_") and not str(user.target).startswith("_") and first is node
    if user.op == "call_function":
        return first is node and (user.kwargs.get("inplace") is True or user.target in _IN_PLACE_FUNCTIONS or
                                  getattr(user.target, "__name__", "").endswith("_"))
    return False


def _protect_from_in_place(graph: fx.Graph, node: fx.Node, root: nn.Module) -> fx.Node:
    """``node``, or a copy of it taken before a later node overwrites it in place: a tap before an in-place
    activation (``layer.bn2``, ``relu:input``) must return the pre-activation values, not what the ReLU left."""
    if not any(_writes_in_place(user, node, root) for user in node.users):
        return node
    with graph.inserting_after(node):
        return graph.call_method("clone", (node,))


def build_feature_graph(
    model: nn.Module,
    taps: list[str],
    keep_output: bool = True,
    model_name: str = "model",
    fixed: dict[str, Any] | None = None,
) -> DualGraphModule:
    """A ``DualGraphModule`` returning ``{tap: value, ..., "output": model output}``.

    The model is traced in train and in eval mode (like torchvision), with the
    ``fixed`` arguments of its layer map (``LayerMap.fixed_args``); in each
    graph the output node is replaced by a dict of the tapped nodes (plus the
    original output when ``keep_output``) and dead code is eliminated, so with
    ``keep_output=False`` nothing after the last tap runs (a pruned head is not
    even a submodule of the result). A tap that a later node overwrites in place
    (the input of a ``ReLU(inplace=True)``) is returned as a copy taken before
    it. Submodules and parameters are the model's own objects. Every module's
    ``training`` flag is left as it was.
    """
    graphs: dict[str, fx.Graph] = {}
    with preserved_modes(model):
        for mode in ("train", "eval"):
            graph, qualnames = trace_graph(model, training=mode == "train", fixed=fixed)
            index = NodeIndex(graph, qualnames)
            outputs: dict[str, Any] = {}
            for tap in taps:
                node = index.resolve(tap)
                if node is None:
                    raise UnknownLayerError(
                        f"no layer {tap!r} in the {mode}-mode fx graph of {model_name} "
                        f"(the layer map was traced in eval mode; the two graphs differ here)",
                        tap,
                    )
                outputs[tap] = node
            protected = {node: _protect_from_in_place(graph, node, model) for node in set(outputs.values())}
            outputs = {tap: protected[node] for tap, node in outputs.items()}
            out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
            if keep_output:
                outputs["output"] = out_node.args[0]
            graph.erase_node(out_node)
            graph.output(outputs)
            # DCE asks the owning module whether call_module nodes are impure.
            graph = fx.GraphModule(model, graph).graph
            graph.eliminate_dead_code()
            graph.lint()
            graphs[mode] = graph
        # DualGraphModule.__init__ calls .train() on the shared submodules; the
        # enclosing preserved_modes puts their flags back.
        gm = DualGraphModule(model, graphs["train"], graphs["eval"], class_name=type(model).__name__)
    # Select the graph for the model's current mode without recursing into shared modules.
    gm.graph = graphs["train"] if model.training else graphs["eval"]
    _match_modes(gm, model)
    return gm
