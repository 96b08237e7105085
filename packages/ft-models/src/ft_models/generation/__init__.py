"""The parts of `ft_models.generate`, one concern each; import the public names from there.

- `options`: GenerationOptions, GenerationResult, GenerationError
- `sampling`: Sampler, the one next-token rule of both backends
- `streaming`: IncrementalDecoder, StopFilter, GenerationStream (text deltas and stop strings)
- `templates`: chat templates by name, file or object
- `torch_backend`, `mlx_backend`: the model run step by step against its KV cache, and a PEFT
  adapter applied to it (through `ft_models.adapters`)
"""
