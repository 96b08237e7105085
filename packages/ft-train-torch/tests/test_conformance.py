"""TorchTrainer against ft's trainer conformance suite (ft_testing.conformance)."""

from ft_testing.conformance import TrainerConformance
from ft_train_torch import TorchTrainer


class TestTorchTrainer(TrainerConformance):
    trainer = TorchTrainer
    launch_module = "ft_train_torch.launch"
    preload = ("torch", "transformers", "peft")
