"""Training: ``train(spec)`` runs the whole pipeline; ``Trainer`` is one run's state (step, epoch, evaluate,
checkpoint, resume) for code that drives training itself."""

from kdgraph.train.loop import TrainResult, train
from kdgraph.train.trainer import Trainer

__all__ = ["TrainResult", "Trainer", "train"]
