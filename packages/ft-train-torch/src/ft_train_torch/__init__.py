"""ft-train-torch: ft's PyTorch trainer (LoRA, DoRA, QLoRA, full, prefix tuning, P-tuning; DDP).

>>> from ft_train_torch import TorchTrainer
>>> result = TorchTrainer().train(job, emit=print, should_stop=lambda: False)
"""

from ft_train_core.state import check_resume_compatible
from ft_train_torch.trainer import TorchTrainer

__version__ = "0.1.0"
__all__ = ["TorchTrainer", "check_resume_compatible"]
