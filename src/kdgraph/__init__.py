"""kdgraph: declarative, graph-based feature distillation for PyTorch.

``kdgraph.distill(spec, teacher=..., student=...)`` runs the pipeline from Python; ``kdgraph.load_spec(path)``
reads a YAML spec; ``kdgraph.Spec`` is the schema. Imports are lazy so the CLI starts fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["distill", "load_spec", "Spec", "train", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "distill":
        from kdgraph.api import distill

        return distill
    if name in ("load_spec", "Spec"):
        import kdgraph.spec as spec

        return getattr(spec, name)
    if name == "train":
        from kdgraph.train import train

        return train
    raise AttributeError(f"module 'kdgraph' has no attribute {name!r}")
