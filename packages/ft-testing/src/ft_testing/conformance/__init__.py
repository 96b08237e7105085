"""The trainer conformance suite: the tests that say what "a trainer" is. A plugin of the
`ft.trainers` entry point group that passes them plugs into `ft train`, whatever its backend.
ft's own trainers (ft-train-torch, ft-train-mlx) run exactly these tests.

Run it from a test module of the trainer's package: subclass `TrainerConformance` as a class
pytest collects (`Test...`), and say how to make the trainer and which module runs a job file:

    # tests/test_conformance.py
    from ft_testing.conformance import TrainerConformance
    from my_trainer import MyTrainer


    class TestMyTrainer(TrainerConformance):
        trainer = MyTrainer                    # a class or a function that makes the trainer
        launch_module = "my_trainer.launch"    # `python -m my_trainer.launch job.json`
        preload = ("torch",)                   # optional: heavy imports, done once for the
                                               # SIGKILLed children to fork from

Settings a backend needs changed for every job (a slow backend's shorter rows) come from the
`job_settings` fixture, overridden in the package's conftest.py; the trainer's own tests and
the suite then train the same jobs:

    # tests/conftest.py
    @pytest.fixture(scope="session")
    def job_settings() -> dict[str, object]:
        return {"data__max_seq_length": 64}

It needs `pip install "ft-testing[conformance]"` (ft-train-core and ft-data) and the real
datasets of the `shared_datasets` fixture (`FT_TEST_DATASETS`). The jobs are tiny and exact:
the tiny random Llama of `tiny_model_factory`, 32 Alpaca rows to train on and 8 to validate,
LoRA r=4, float32 on one CPU thread (`ft_testing.training.TINY_SETTINGS`).

What it checks (each run's events are also checked against the TypedDicts of
`ft_train_core.protocol`, and its `TrainResult` against its `end` event):

- the protocol: `Trainer`, capabilities, placement, launch commands; every kind of event;
  a resume with a changed setting warns; one epoch of LoRA: the events, parameter counts,
  tokens, and the adapter in PEFT's layout; evaluation samples after every evaluation (none
  with `training.eval_samples: 0`, and the same training either way);
- numbers: it learns; the warmup and cosine schedule; packing equals padding; gradient
  accumulation equals one big batch;
- stopping: early stopping, `keep_last` keeps the best too (complete checkpoints), a stop
  request, a non-finite loss stops before the optimizer step;
- resuming: stopped and resumed runs, and runs SIGKILLed (in a child process running the job
  file) and restarted, end bit-identical to uninterrupted ones, with the same losses (DPO on
  preference pairs too, with the same rewards, for a trainer whose capabilities list it); the
  best checkpoint and patience survive a resume; a corrupt checkpoint is refused; a
  checkpoint carries the fingerprint `ft train --resume` compares.

The SIGKILL tests are marked `slow`. Each group is a class of its own (`ProtocolTests`,
`LearningTests`, `StoppingTests`, `ResumeTests`), for a trainer that wants to run only some.
"""

from ft_testing.conformance.base import ConformanceBase, assert_same_losses
from ft_testing.conformance.learning import LearningTests
from ft_testing.conformance.protocol import ProtocolTests
from ft_testing.conformance.resuming import ResumeTests
from ft_testing.conformance.stopping import StoppingTests


class TrainerConformance(ProtocolTests, LearningTests, StoppingTests, ResumeTests):
    """Every conformance test: subclass it as `Test<Name>` and set `trainer` and
    `launch_module` (and `preload`); see the module docstring."""


__all__ = [
    "ConformanceBase",
    "LearningTests",
    "ProtocolTests",
    "ResumeTests",
    "StoppingTests",
    "TrainerConformance",
    "assert_same_losses",
]
