"""ft-train-mlx: ft's MLX trainer (LoRA, DoRA, QLoRA, full fine-tuning; mx.distributed)."""

from ft_train_mlx.trainer import MLXTrainer, check_resume_compatible

__version__ = "0.1.0"
__all__ = ["MLXTrainer", "check_resume_compatible"]
