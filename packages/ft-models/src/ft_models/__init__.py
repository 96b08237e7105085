"""ft-models: resolve, download and import models; device and memory; generation."""

__version__ = "0.1.0"
