"""Test infrastructure for ft and ft plugins: tiny random models, the embedded model, and a local
Hugging Face Hub. The pytest fixtures live in `ft_testing.plugin`, which pytest loads by itself."""

from ft_testing.hub_server import HubRequest, LocalHub
from ft_testing.tiny_models import ARCHITECTURES, CAUSAL_ARCHITECTURES, build_tiny_model

__all__ = ["ARCHITECTURES", "CAUSAL_ARCHITECTURES", "HubRequest", "LocalHub", "build_tiny_model"]
