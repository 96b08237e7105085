"""GGUF import: a llama.cpp `.gguf` file becomes a Hugging Face safetensors folder to train from.

    >>> from ft_models.gguf import import_gguf, validate_gguf
    >>> validate_gguf("SmolLM2-135M-Instruct.Q4_1.gguf").tensor_types
    {'F32': 61, 'Q4_1': 210, 'Q8_0': 1}
    >>> import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2", dtype="bfloat16")
    PosixPath('smollm2')

The weights are dequantized with numpy and gguf-py and written as safetensors without torch;
the tokenizer is rebuilt with transformers' GGUF converter (no torch needed either). See
`docs-gguf.md` in this package for what is supported and how it was checked.
"""

from ft_models.gguf.architectures import ARCHITECTURES, Architecture
from ft_models.gguf.importer import GGUFSummary, Progress, import_gguf, validate_gguf
from ft_models.gguf.reader import GGUFError, GGUFHeader, TensorInfo, read_gguf_header

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "GGUFError",
    "GGUFHeader",
    "GGUFSummary",
    "Progress",
    "TensorInfo",
    "import_gguf",
    "read_gguf_header",
    "validate_gguf",
]
