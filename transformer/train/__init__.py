"""Training: the experiment builder, pure steps, strategies, checkpoints, metrics,
evaluation and the loop.

    experiment = experiment.build(config, workdir)   # experiment.py: config -> pieces
    metrics = Trainer(experiment).run()              # loop.py: executes them
    metrics = train_and_evaluate(config, workdir)    # the two together (train.py)
"""

from transformer.train.loop import Trainer, train_and_evaluate
from transformer.train.step import TrainState, eval_step, train_step

__all__ = ['Trainer', 'TrainState', 'eval_step', 'train_and_evaluate', 'train_step']
