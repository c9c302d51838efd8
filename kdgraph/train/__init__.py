"""Training: the loop, optimizers and schedules, evaluation, checkpoints and the run directory."""

from kdgraph.train.loop import TrainResult, build_data, build_models, train

__all__ = ["TrainResult", "train", "build_data", "build_models"]
