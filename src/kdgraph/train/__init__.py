"""Training: the loop, optimizers and schedules, evaluation, checkpoints and the run directory."""

from kdgraph.train.loop import TrainResult, train
from kdgraph.train.resolve import build_data, build_models

__all__ = ["TrainResult", "train", "build_data", "build_models"]
