"""The curriculum (``train.stages``): which loss terms are active in each epoch, and where the optimizer is reset.

A stage lasts a number of epochs and names the pairs (and whether the logits term and cross-entropy on the labels)
it trains, and the pairs whose loss module it trains on the module's own objective (``objectives``: FT's
paraphraser before the student is distilled). A stage with ``reset_optimizer`` starts with a fresh optimizer whose schedule spans that
stage. Everything here is a function of the spec and a position (epoch, step in epoch), so a resumed run finds the
same stage and the same optimizer owner as the run that wrote the checkpoint.
"""

from __future__ import annotations

from typing import Optional

from kdgraph.graph.terms import Term, TermKind
from kdgraph.spec.schema import StageSpec

__all__ = ["Curriculum"]


class Curriculum:
    """``train.stages`` over a graph's terms; with no stages every method says "no curriculum" (None)."""

    def __init__(self, stages: list[StageSpec], terms: list[Term]):
        self.stages = list(stages)
        self.terms = list(terms)
        self.starts: list[int] = []
        epoch = 0
        for stage in self.stages:
            self.starts.append(epoch)
            epoch += stage.epochs

    def __bool__(self) -> bool:
        return bool(self.stages)

    def stage_at(self, epoch: int) -> Optional[int]:
        """Index of the stage that contains ``epoch`` (0-based), None without a curriculum."""
        return max((i for i, start in enumerate(self.starts) if start <= epoch), default=None)

    def name(self, index: int) -> str:
        """The stage's name for metrics (``stageN`` when it has none)."""
        return self.stages[index].name or f"stage{index + 1}"

    def active(self, index: int) -> frozenset[str]:
        """Labels of the terms stage ``index`` trains: its pairs (by name or label), their objectives, the logits
        term and cross-entropy when it asks for them."""
        stage = self.stages[index]

        def named(term: Term, names: list[str]) -> bool:
            label = term.label.removesuffix("/objective")
            return label in names or label.removeprefix("pair:") in names

        labels = {t.label for t in self.terms if t.kind is TermKind.PAIR and named(t, stage.pairs)}
        labels |= {t.label for t in self.terms if t.kind is TermKind.OBJECTIVE and named(t, stage.objectives)}
        if stage.logits:
            labels.add("logits")
        if stage.ce:
            labels.add("ce")
        return frozenset(labels)

    def resets_at(self, index: int, epoch: int, step_in_epoch: int) -> bool:
        """Whether a fresh optimizer starts here: the first step of a stage that asks for one."""
        return self.stages[index].reset_optimizer and epoch == self.starts[index] and step_in_epoch == 0

    def optimizer_owner(self, epoch: int, step_in_epoch: int) -> Optional[int]:
        """The stage whose optimizer is in use at this position (the last resetting stage already begun), None for the
        run's first optimizer."""
        owner = None
        for index, start in enumerate(self.starts):
            begun = start < epoch or (start == epoch and step_in_epoch > 0)
            if begun and self.stages[index].reset_optimizer:
                owner = index
        return owner

    def epochs(self, index: Optional[int], total: int) -> int:
        """How many epochs an optimizer's schedule spans: its stage's (``index``), or the whole run's (None)."""
        return total if index is None else self.stages[index].epochs
