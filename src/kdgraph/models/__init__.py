"""Model references, the built-in zoo and safetensors weights."""

from kdgraph.models.refs import SCHEMES, build_model, create_model
from kdgraph.models.weights import load_weights, read_state_dict
from kdgraph.models.zoo import ZOO

__all__ = ["SCHEMES", "ZOO", "build_model", "create_model", "load_weights", "read_state_dict"]
