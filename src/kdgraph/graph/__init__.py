"""The distillation graph: built from a Spec and live models; one forward computes every loss term."""

from kdgraph.graph.build import BuiltGraph, PairReport, build_graph, trace_pair_models
from kdgraph.graph.distill import DistillGraph, StepOutput, Term

__all__ = ["DistillGraph", "StepOutput", "Term", "BuiltGraph", "PairReport", "build_graph", "trace_pair_models"]
