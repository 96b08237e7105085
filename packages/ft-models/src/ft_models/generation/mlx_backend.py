"""Generation on MLX: an mlx-lm model run one step at a time against its prompt cache, and a
PEFT adapter merged into its weights (`ft_models.adapters.merged_weight`: LoRA and DoRA, as
peft merges them). mlx and mlx-lm are imported inside the functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.options import GenerationError, adapter_errors

PREFILL_CHUNK = 512
"""How many prompt tokens MLX runs through the model at once: bounds the prefill's memory."""


class MlxLM:
    """An mlx-lm model run one step at a time against its prompt cache."""

    backend = "mlx"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None
        self._adapters: MlxAdapters | None = None

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array([list(ids)]), cache=self.cache)[0, -1]
        return np.array(logits.astype(mx.float32))

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        self.cache = make_prompt_cache(self.model)
        ids = list(prompt_ids)
        while len(ids) > PREFILL_CHUNK:
            self.model(mx.array([ids[:PREFILL_CHUNK]]), cache=self.cache)
            mx.eval([c.state for c in self.cache])
            ids = ids[PREFILL_CHUNK:]
        return self._forward(ids)

    def step(self, token: int) -> np.ndarray:
        return self._forward([token])

    def batch(self) -> MlxBatch:
        """An empty batch of sequences decoded together (continuous batching)."""
        return MlxBatch(self)

    def adapters(self) -> MlxAdapters:
        """This model's unmerged adapters (one set per model)."""
        if self._adapters is None:
            self._adapters = MlxAdapters(self)
        return self._adapters


class MlxBatch:
    """Sequences decoded together, one forward pass per step over all of them (mlx-lm's
    batch caches: `BatchKVCache.merge`, `extend`, `filter`, `extract`, as its BatchGenerator
    uses them).

    Each prompt is read alone, exactly as `MlxLM.start` reads it; its cache then joins the
    batch's (left-padded, with per-row offsets and a mask). A batch of one keeps the plain
    cache and runs exactly as `MlxLM.step` does. Rows are named by the caller's keys.
    """

    def __init__(self, lm: MlxLM) -> None:
        self.lm = lm
        self.keys: list[Any] = []
        self.cache: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def can_join(self) -> bool:
        """Whether another row may join: every layer's cache must be one mlx-lm can batch."""
        from mlx_lm.models.cache import BatchKVCache, KVCache

        return self.cache is None or all(isinstance(c, (KVCache, BatchKVCache)) for c in self.cache)

    def add(self, key: Any, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read `prompt_ids` alone and join the batch as row `key`; the logits after it."""
        from mlx_lm.models.cache import BatchKVCache

        if key in self.keys:
            raise ValueError(f"row {key!r} is already in the batch")
        if self.keys and not self.can_join():
            raise GenerationError("this model's cache cannot be batched: decode one at a time")
        single = self.lm.cache  # the lm's own cache (single generations) is left as it was
        logits = self.lm.start(prompt_ids)
        cache, self.lm.cache = self.lm.cache, single
        if self.cache is None:
            self.cache = cache
        elif len(self.keys) == 1:
            self.cache = [
                BatchKVCache.merge([a, b]) for a, b in zip(self.cache, cache, strict=True)
            ]
        else:
            for mine, theirs in zip(self.cache, cache, strict=True):
                mine.extend(BatchKVCache.merge([theirs]))
        self.keys.append(key)
        return logits

    def remove(self, key: Any) -> None:
        """Drop row `key` (finished, or its client left)."""
        index = self.keys.index(key)
        self.keys.pop(index)
        if not self.keys:
            self.cache = None
        elif len(self.keys) == 1:
            # back to a plain cache: a batch of one runs as MlxLM.step does
            assert self.cache is not None
            self.cache = [c.extract(1 - index) for c in self.cache]
        else:
            assert self.cache is not None
            keep = [i for i in range(len(self.keys) + 1) if i != index]
            for c in self.cache:
                c.filter(keep)

    def step(self, tokens: Mapping[Any, int]) -> dict[Any, np.ndarray]:
        """Feed each row its next token (every row, by key) in one forward pass; the logits
        after it, by key."""
        import mlx.core as mx

        if set(tokens) != set(self.keys):
            raise ValueError("step needs one token for every row of the batch, and no other")
        inputs = mx.array([[tokens[k]] for k in self.keys])
        logits = self.lm.model(inputs, cache=self.cache)[:, -1]
        out = np.array(logits.astype(mx.float32))
        return {key: out[row] for row, key in enumerate(self.keys)}


def _adapter_updates(
    model: Any, folder: Path
) -> list[tuple[str, np.ndarray, np.ndarray, float, np.ndarray | None, Any]]:
    """Each module the PEFT LoRA or DoRA adapter in `folder` adapts, checked against the mlx-lm
    model: (module path, A, B, scale, DoRA magnitude or None, the model's weight)."""
    from mlx.utils import tree_flatten

    from ft_models.adapters import (
        adapted_modules,
        mlx_module_path,
        read_adapter_config,
        read_adapter_tensors,
    )

    folder = Path(folder)
    with adapter_errors():
        config = read_adapter_config(folder)
        if not config.is_lora:
            raise GenerationError(
                f"adapter {folder} is a {config.peft_type} adapter; ft generates with LoRA "
                "adapters only. Merge it into the model with peft, or export the run with "
                "`ft export`."
            )
        tensors = read_adapter_tensors(folder)
        modules = adapted_modules(tensors, folder, strict=True)
    params = dict(tree_flatten(model.parameters()))
    model_type = str(getattr(model, "model_type", ""))
    out = []
    for module, roles in sorted(modules.items()):
        path = mlx_module_path(module, model_type)
        target = f"{path}.weight"
        if target not in params:
            raise GenerationError(
                f"adapter {folder} adapts {module}, which this model does not have: "
                "was it trained on another base model?"
            )
        # B @ A is (out, in), the layout of every MLX Linear weight (peft's fan_in_fan_out only
        # concerns transformers' Conv1D storage, which mlx-lm transposes on load).
        a, b = tensors[roles["A"]], tensors[roles["B"]]
        weight = params[target]
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise GenerationError(
                f"adapter {folder}: {module} is {(b.shape[0], a.shape[1])} in the adapter but "
                f"{tuple(weight.shape)} in the model: was it trained on another base model?"
            )
        magnitude = tensors[roles["magnitude"]] if "magnitude" in roles else None
        out.append((path, a, b, config.scale_of(module), magnitude, weight))
    return out


def merge_adapter_mlx(model: Any, folder: Path) -> int:
    """Merge the PEFT LoRA or DoRA adapter in `folder` into an mlx-lm model's weights, in
    float32 (`ft_models.adapters.merged_weight`, each module at its own scale); return how many
    weight matrices changed. Raises GenerationError for a tensor it has no place for."""
    import mlx.core as mx

    from ft_models.adapters import merged_weight

    updates = []
    for path, a, b, scale, magnitude, weight in _adapter_updates(model, folder):
        merged = merged_weight(np.array(weight.astype(mx.float32)), a, b, scale, magnitude)
        updates.append((f"{path}.weight", mx.array(merged).astype(weight.dtype)))
    model.load_weights(updates, strict=False)
    mx.eval(model.parameters())
    return len(updates)


class _Slots:
    """An adapted layer's adapters by name and the active one (a plain object, so mlx does
    not count them among the model's parameters)."""

    def __init__(self) -> None:
        self.adapters: dict[str, tuple[str, Any, Any]] = {}
        self.active: tuple[str, Any, Any] | None = None


def _adapted_linear(base: Any) -> Any:
    import mlx.nn as nn

    class AdaptedLinear(nn.Module):
        """A Linear layer and the LoRA adapters that may be added to it, one active at a time:
        LoRA as x A^T (s B)^T added to the layer's output; DoRA as its merged weight."""

        def __init__(self, base: Any) -> None:
            super().__init__()
            self.base = base
            self.slots = _Slots()

        def __call__(self, x: Any) -> Any:
            active = self.slots.active
            if active is None:
                return self.base(x)
            kind, first, second = active
            if kind == "lora":
                return self.base(x) + (x @ first) @ second
            y = x @ first
            return y + self.base.bias if "bias" in self.base else y

    return AdaptedLinear(base)


class MlxAdapters:
    """PEFT LoRA/DoRA adapters kept unmerged on one shared mlx-lm model, loaded and unloaded by
    name; `activate(name)` chooses the one the next forward passes use (None: the base alone).
    An adapted Linear is wrapped once; each adapter adds its low-rank pair to it (a DoRA
    adapter, whose rows are rescaled, its merged matrix)."""

    def __init__(self, lm: MlxLM) -> None:
        self.lm = lm
        self.layers: dict[str, Any] = {}
        self.names: list[str] = []
        self.active: str | None = None

    def load(self, name: str, folder: Path) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        from ft_models.adapters import merged_weight

        model = self.lm.model
        updates = _adapter_updates(model, folder)
        modules = dict(model.named_modules())
        wrapped = []
        for path, a, b, scale, magnitude, weight in updates:
            layer = self.layers.get(path)
            if layer is None:
                layer = self.layers[path] = _adapted_linear(modules[path])
                wrapped.append((path, layer))
            dtype = weight.dtype
            if magnitude is None:
                entry = (
                    "lora",
                    mx.array(a.T).astype(dtype),
                    mx.array((np.float32(scale) * b.astype(np.float32)).T).astype(dtype),
                )
            else:
                merged = merged_weight(np.array(weight.astype(mx.float32)), a, b, scale, magnitude)
                entry = ("merged", mx.array(merged.T).astype(dtype), None)
            mx.eval([x for x in entry[1:] if x is not None])
            layer.slots.adapters[name] = entry
        if wrapped:
            model.update_modules(tree_unflatten(wrapped))
        self.names.append(name)
        self.activate(self.active)

    def unload(self, name: str) -> None:
        for layer in self.layers.values():
            layer.slots.adapters.pop(name, None)
        self.names.remove(name)
        if self.active == name:
            self.active = None
        self.activate(self.active)

    def activate(self, name: str | None) -> None:
        for layer in self.layers.values():
            layer.slots.active = layer.slots.adapters.get(name) if name is not None else None
        self.active = name


__all__ = ["PREFILL_CHUNK", "MlxAdapters", "MlxBatch", "MlxLM", "merge_adapter_mlx"]
