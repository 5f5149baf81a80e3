"""Training: state, losses, schedules, pure steps, checkpoints, metrics and the loop."""

from transformer.train.loop import Trainer, train_and_evaluate
from transformer.train.step import TrainState, eval_step, train_step

__all__ = ['Trainer', 'train_and_evaluate', 'TrainState', 'eval_step', 'train_step']
