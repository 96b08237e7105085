"""ft-models: resolve, download and import models; device and memory; generation."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ft_models.generate import (
        GenerationError,
        GenerationOptions,
        GenerationResult,
        Generator,
    )

# Generation is imported on first use: `import ft_models` must not pull in numpy-heavy or
# backend code (torch and mlx are imported only when a model loads).
_LAZY = {
    "Generator": "ft_models.generate",
    "GenerationOptions": "ft_models.generate",
    "GenerationResult": "ft_models.generate",
    "GenerationError": "ft_models.generate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ft_models' has no attribute {name!r}")


__all__ = ["GenerationError", "GenerationOptions", "GenerationResult", "Generator", "__version__"]
