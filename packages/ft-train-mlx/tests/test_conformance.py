"""MLXTrainer against ft's trainer conformance suite (ft_testing.conformance)."""

from ft_testing.conformance import TrainerConformance
from ft_train_mlx import MLXTrainer


class TestMLXTrainer(TrainerConformance):
    trainer = MLXTrainer
    launch_module = "ft_train_mlx.launch"
    # mlx-lm's LoRA layers and Llama; an MLX run loads its tokenizer through transformers,
    # which imports its torch model code (7 s a process here, unless imported once up front).
    preload = ("mlx_lm.tuner.utils", "mlx_lm.models.llama", "transformers.modeling_utils")
