"""ft-train-core: the training contract between ft-runs and the trainers.

The `Trainer` protocol and its events (`ft_train_core.protocol`), jobs and job files (`jobs`),
the batch plan and the run plan (`batch_plan`, `plan`), the schedule (`schedule`), the trainer
state and fingerprints (`state`) and the loop's bookkeeping (`steps`). It depends on ft-config,
ft-data and ft-models only: a trainer plugin installs it, not ft-runs.
"""

__version__ = "0.1.0"
