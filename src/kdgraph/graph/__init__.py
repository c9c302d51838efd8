"""The distillation graph: built from a Spec and live models; one forward computes every loss term."""

from kdgraph.graph.build import BuiltGraph, PairReport, build_graph
from kdgraph.graph.distill_graph import DistillGraph, StepOutput
from kdgraph.graph.lookup import trace_pair_models
from kdgraph.graph.terms import Term, TermKind

__all__ = ["DistillGraph", "StepOutput", "Term", "TermKind", "BuiltGraph", "PairReport", "build_graph",
           "trace_pair_models"]
