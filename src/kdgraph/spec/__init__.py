"""The spec: schema, YAML loading with line-aware errors, and ``--set`` overrides."""

from kdgraph.spec.load import apply_overrides, load_spec, parse_overrides, spec_from_dict
from kdgraph.spec.schema import (
    DataSpec, DistillSpec, LogitsSpec, LossSpec, ModelSpec, OptimizerSpec, PairSpec, RuntimeSpec, ScheduleSpec,
    Spec, TrainSpec,
)

__all__ = [
    "Spec", "ModelSpec", "DataSpec", "DistillSpec", "LogitsSpec", "PairSpec", "LossSpec", "TrainSpec",
    "OptimizerSpec", "ScheduleSpec", "RuntimeSpec", "load_spec", "spec_from_dict", "parse_overrides",
    "apply_overrides",
]
