"""One root for the user's errors, and one "did you mean" helper."""

import importlib
import pkgutil

import kdgraph
from kdgraph.errors import KdgraphError, did_you_mean, suggest


def _kdgraph_modules():
    for info in pkgutil.walk_packages(kdgraph.__path__, "kdgraph."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_every_user_facing_error_class_is_a_kdgraph_error():
    found = []
    for module in _kdgraph_modules():
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                found.append(obj)
                assert issubclass(obj, KdgraphError), f"{module.__name__}.{name} is not a KdgraphError"
    names = {cls.__name__ for cls in found}
    assert {"DataError", "AlignmentError", "UnknownLayerError", "UnknownLossError", "SpecError"} <= names


def test_builtin_second_bases_are_kept_and_messages_are_plain():
    from kdgraph.align import AlignmentError
    from kdgraph.data import DataError
    from kdgraph.losses import UnknownLossError
    from kdgraph.trace import UnknownLayerError

    assert issubclass(DataError, ValueError) and issubclass(AlignmentError, ValueError)
    assert issubclass(UnknownLayerError, KeyError) and issubclass(UnknownLossError, KeyError)
    err = UnknownLayerError("no layer 'x' in m", "x")
    assert str(err) == "no layer 'x' in m"  # KeyError alone would quote it
    keyed = DataError("missing")
    keyed.key, keyed.line = "data", 4
    assert str(keyed) == "data (line 4): missing"


def test_suggest():
    assert suggest("logsun", ["mse", "logsum", "l1"]) == ["logsum"]
    assert suggest("zzz", ["mse"]) == []
    assert sorted(suggest("layer", ["layer1", "layer2", "fc"], n=3)) == ["layer1", "layer2"]
    assert did_you_mean("epoch", ["epochs", "seed"]) == "; did you mean 'epochs'?"
    assert did_you_mean("zzz", ["epochs"]) == ""
