"""ft-train-mlx: ft's MLX trainer (LoRA, DoRA, QLoRA, full fine-tuning; mx.distributed).

>>> from ft_train_mlx import train
>>> result = train("model-folder", "train.h5", {"method": "lora"}, output_dir="run", callbacks=[print])

`MLXTrainer` is the `ft.trainers` plugin that `ft train --backend mlx` runs; `train` runs it on
a folder and a prepared dataset; `load_adapted` loads a base with a trained adapter;
`peft_to_mlx_lm` writes an adapter in mlx-lm's own layout.
"""

from ft_train_core.state import check_resume_compatible
from ft_train_mlx.api import load_adapted, make_config, train
from ft_train_mlx.methods import peft_to_mlx_lm
from ft_train_mlx.trainer import MLXTrainer

__version__ = "0.1.0"
__all__ = [
    "MLXTrainer",
    "check_resume_compatible",
    "load_adapted",
    "make_config",
    "peft_to_mlx_lm",
    "train",
]
