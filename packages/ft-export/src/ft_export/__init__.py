"""ft-export: merge and export fine-tuned models, each export verified.

```python
from ft_export import ExportOptions, ExportSource, get_exporter

source = ExportSource(base=Path("models/base"), adapters=(Path("runs/x/adapter"),))
result = get_exporter("gguf").export(source, Path("out"), ExportOptions(quant="q8_0"), no_progress)
print(result.verification.summary())
```

torch, transformers and peft are imported only inside the exporters (the `torch` extra), mlx and
mlx-lm only by the `mlx` formats; importing this package stays cheap.
"""

from ft_export.registry import exporters, get_exporter
from ft_export.types import (
    DEFAULT_PROMPT,
    Exporter,
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
    Progress,
    Verification,
    VerificationError,
    no_progress,
)

__all__ = [
    "DEFAULT_PROMPT",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ExportSource",
    "Exporter",
    "Progress",
    "Verification",
    "VerificationError",
    "exporters",
    "get_exporter",
    "no_progress",
]
