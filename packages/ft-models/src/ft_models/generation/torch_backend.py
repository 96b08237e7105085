"""Generation on torch: a transformers causal LM run one step at a time against its KV cache,
and a PEFT adapter merged in with peft (checked to fit first: peft only warns about tensors it
has no place for). torch, transformers and peft are imported inside the functions."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ft_models.generation.options import GenerationError, adapter_errors


class TorchLM:
    """A transformers causal LM run one step at a time against its KV cache.

    Llama-shaped models (`static_decode.unsupported_reason` says which) decode in ft's static
    loop (`StaticDecoder`: a preallocated cache, no per-step rebuilding), others, and a model
    serving unmerged adapters, in transformers' `forward` with its `DynamicCache`.
    `FT_STATIC_DECODE=0` turns the static loop off (to compare, or to rule it out).

    `compile` runs the static loop's single-sequence step compiled on a CPU
    (`compiled_decode`): True builds it for each cache size when first needed (tens of seconds,
    once: later processes load it from disk in a fraction of a second), "cached" only uses
    what is built, False never; each token is then faster (see docs/generation.md). `warm()`
    builds in a background thread while steps run eagerly."""

    backend = "torch"

    def __init__(self, model: Any, compile: bool | str = False) -> None:
        import inspect
        import os

        self.model = model
        self.compile = compile
        self.cache: Any = None
        self._adapters: TorchAdapters | None = None
        accepted = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name is deprecated).
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # Only the last position's logits are needed: a long prompt need not make a
        # (length x vocabulary) matrix.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._static: Any = None
        self.static_reason: str | None = None
        """Why the static loop is not used (None: it is, or has not been asked for yet)."""
        if os.environ.get("FT_STATIC_DECODE", "1") == "0":
            self.static_reason = "FT_STATIC_DECODE=0"
        self._single: Any = None
        """What decodes the single sequence of start/step: the static loop or self."""

    def static(self) -> Any:
        """The static decode loop for this model, or None (reason in `static_reason`). Built
        on first use; never once adapters are served unmerged (peft wraps the layers)."""
        from ft_models.generation.static_decode import StaticDecoder, unsupported_reason

        if self._static is None and self.static_reason is None:
            if self._adapters is not None:
                self.static_reason = "adapters are served unmerged"
            else:
                self.static_reason = unsupported_reason(self.model)
                if self.static_reason is None:
                    self._static = StaticDecoder(self.model, compile=self.compile)
        if self._adapters is not None and self._adapters.active is not None:
            return None  # an adapter is on: its LoRA layers run in transformers' forward
        return self._static

    def warm(self) -> None:
        """Start compiling the decode step in a background thread, when `compile` was asked
        for and the static loop runs this model (else nothing)."""
        static = self.static()
        if static is not None:
            static.warm()

    def build(self, length: int, say: Any = None) -> list[int]:
        """Build (or load) the compiled step now, in the foreground, for sequences of up to
        `length` positions, when `compile` was asked for and the static loop runs this model
        (else nothing); `say(capacity)` is called before each build. The capacities built."""
        static = self.static()
        if static is None or static.compiled is None:
            return []
        try:
            return static.build(length, say)
        except Exception as error:  # decoding goes on eagerly, and says why
            static.compile_failed(error)
            return []

    @property
    def decode_step(self) -> str:
        """How single-sequence tokens were decoded: "compiled" once a compiled step is loaded,
        else "static" (ft's static loop, eager) or "forward" (transformers' forward)."""
        static = self._static
        if static is None:
            return "forward"
        return "compiled" if static.compiled is not None and static.compiled.runners else "static"

    @property
    def compile_pending(self) -> bool:
        """Whether a compiled step could serve this model but none is built for it yet (what
        `build` would make): the static loop runs eagerly meanwhile."""
        static = self._static
        return static is not None and static.compiled is not None and not static.compiled.runners

    @property
    def compile_reason(self) -> str | None:
        """Why the decode step is not compiled, when it was asked for (None: it is)."""
        if not self.compile:
            return "not asked for"
        if self._static is None:
            return self.static_reason or "the static loop is not built yet"
        return self._static.compile_reason

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        inputs = torch.tensor([list(ids)], dtype=torch.long, device=device)
        logits, self.cache = self.run(inputs, self.cache)
        return logits[0]

    def run(self, inputs: Any, cache: Any, **extra: Any) -> tuple[np.ndarray, Any]:
        """One forward pass of `inputs` (batch x tokens) against `cache`: the last position's
        logits of each row (batch x vocabulary, float32) and the grown cache."""
        import torch

        with torch.inference_mode():
            out = self.model(
                input_ids=inputs, use_cache=True, **{self._cache_arg: cache}, **self._extra, **extra
            )
        logits = out.logits[:, -1].float().cpu().numpy()
        return logits, getattr(out, self._cache_arg)

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read the prompt into a fresh cache; the logits of the token after it."""
        self.cache = None
        self._single = self.static()
        if self._single is not None:
            return self._single.start(prompt_ids)
        return self._forward(prompt_ids)

    def step(self, token: int) -> np.ndarray:
        """Feed one token; the logits of the token after it."""
        if self._single is not None:
            return self._single.step(token)
        return self._forward([token])

    def batch(self) -> Any:
        """An empty batch of sequences decoded together (continuous batching): in the static
        loop where it runs this model (`StaticBatch`), else a `TorchBatch`."""
        from ft_models.generation.static_batch import StaticBatch

        static = self.static()
        return StaticBatch(static) if static is not None else TorchBatch(self)

    def adapters(self) -> TorchAdapters:
        """This model's unmerged adapters (one set per model: peft changes it in place)."""
        if self._adapters is None:
            self._adapters = TorchAdapters(self)
        return self._adapters


class TorchBatch:
    """Sequences decoded together, one forward pass per step over all of them.

    Each sequence's prompt is read alone, exactly as `TorchLM.start` reads it, into a cache of
    its own; that cache then joins the batch's: the shorter side is padded on the left, and an
    attention mask and per-row positions keep the padding out of every row's attention. A row
    that leaves is dropped from the cache, and padding every row has is cut off, so a batch of
    one runs exactly as `TorchLM.step` does (no mask, no padding). Rows are named by the
    caller's keys.
    """

    def __init__(self, lm: TorchLM) -> None:
        self.lm = lm
        self.keys: list[Any] = []
        self.cache: Any = None
        self.pad: list[int] = []
        """Each row's left padding in the cache."""
        self.length = 0
        """The cache's length (padding included)."""

    def __len__(self) -> int:
        return len(self.keys)

    def can_join(self) -> bool:
        """Whether another row may join: the cache must be one a batch can be built from
        (plain per-layer key/value tensors; sliding-window or recurrent layers cannot)."""
        if self.cache is None:
            return True
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self.cache, "layers", None)
        return layers is not None and all(type(layer) is DynamicLayer for layer in layers)

    def add(self, key: Any, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read `prompt_ids` alone and join the batch as row `key`; the logits after it."""
        import torch

        if key in self.keys:
            raise ValueError(f"row {key!r} is already in the batch")
        if self.keys and not self.can_join():
            raise GenerationError("this model's cache cannot be batched: decode one at a time")
        device = next(self.lm.model.parameters()).device
        inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        logits, cache = self.lm.run(inputs, None)
        size = len(prompt_ids)
        if not self.keys:
            self.cache, self.pad, self.length = cache, [0], size
        else:
            total = max(self.length, size)
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat(
                    [_left_pad(mine.keys, total), _left_pad(theirs.keys, total)], dim=0
                )
                mine.values = torch.cat(
                    [_left_pad(mine.values, total), _left_pad(theirs.values, total)], dim=0
                )
            self.pad = [p + total - self.length for p in self.pad] + [total - size]
            self.length = total
        self.keys.append(key)
        return logits[0]

    def remove(self, key: Any) -> None:
        """Drop row `key` (finished, or its client left)."""
        import torch

        index = self.keys.index(key)
        keep = [i for i in range(len(self.keys)) if i != index]
        self.keys.pop(index)
        self.pad.pop(index)
        if not self.keys:
            self.cache, self.pad, self.length = None, [], 0
            return
        rows = torch.tensor(keep, dtype=torch.long, device=self.cache.layers[0].keys.device)
        cut = min(self.pad)
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows, :, cut:]
            layer.values = layer.values[rows, :, cut:]
        self.pad = [p - cut for p in self.pad]
        self.length -= cut

    def step(self, tokens: Mapping[Any, int]) -> dict[Any, np.ndarray]:
        """Feed each row its next token (every row, by key) in one forward pass; the logits
        after it, by key."""
        import torch

        if set(tokens) != set(self.keys):
            raise ValueError("step needs one token for every row of the batch, and no other")
        device = next(self.lm.model.parameters()).device
        inputs = torch.tensor([[tokens[k]] for k in self.keys], dtype=torch.long, device=device)
        extra: dict[str, Any] = {}
        if any(self.pad):
            mask = torch.ones((len(self.keys), self.length + 1), dtype=torch.long, device=device)
            for row, pad in enumerate(self.pad):
                mask[row, :pad] = 0
            positions = [[self.length - pad] for pad in self.pad]
            extra = {
                "attention_mask": mask,
                "position_ids": torch.tensor(positions, dtype=torch.long, device=device),
            }
        logits, self.cache = self.lm.run(inputs, self.cache, **extra)
        self.length += 1
        return {key: logits[row] for row, key in enumerate(self.keys)}


class TorchAdapters:
    """PEFT LoRA/DoRA adapters kept unmerged on one shared base model, loaded and unloaded by
    name; `activate(name)` chooses the one the next forward passes use (None: the base alone).
    Generation keeps calling the base model: peft puts its adapter layers into it in place."""

    def __init__(self, lm: TorchLM) -> None:
        self.lm = lm
        self.peft: Any = None
        self.names: list[str] = []
        self.active: str | None = None

    def load(self, name: str, folder: Path) -> None:
        """Load the adapter in `folder` under `name` (checked to fit the base model first)."""
        folder = Path(folder)
        _check_lora(self.lm.model, folder)
        try:
            from peft import PeftModel
        except ImportError as error:
            raise ImportError("serving an adapter on torch needs peft: pip install peft") from error
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.lm.model, str(folder), adapter_name=name)
            else:
                self.peft.load_adapter(str(folder), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as error:
            raise GenerationError(
                f"adapter {folder} does not fit this model (was it trained on another base "
                f"model?): {str(error).strip().splitlines()[0][:300]}"
            ) from error
        self.names.append(name)
        self.active = None
        self.activate(None)

    def unload(self, name: str) -> None:
        """Delete the adapter `name` from the model (its memory is freed)."""
        import warnings

        with warnings.catch_warnings():  # peft warns when the active adapter goes: ours says
            warnings.simplefilter("ignore", UserWarning)
            self.peft.delete_adapter(name)
        self.names.remove(name)
        if self.active == name:
            self.active = None
        self.activate(self.active)

    def activate(self, name: str | None) -> None:
        """The adapter the next forward passes use; None: the base model alone."""
        if self.peft is None:
            return
        tuner = self.peft.base_model
        if name is None:
            tuner._enable_adapter_layers(enabled=False)
        else:
            tuner._enable_adapter_layers(enabled=True)
            tuner.set_adapter(name, inference_mode=True)
        self.active = name


def _left_pad(tensor: Any, length: int) -> Any:
    """`tensor` (batch, heads, positions, dim) padded with zeros on the left to `length`."""
    import torch

    missing = length - tensor.shape[2]
    if missing == 0:
        return tensor
    shape = (tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


def torch_generation_dtype(device: str) -> str:
    """The dtype `dtype: auto` generates in on torch's `device`: on a GPU, what it computes best;
    on a CPU, `cpu_decode_dtype()`."""
    from ft_models.device import pick_device

    return cpu_decode_dtype() if pick_device(device).device == "cpu" else "auto"


@functools.cache
def cpu_decode_dtype() -> str:
    """bfloat16 where this CPU computes it natively (AVX512-BF16, AMX) *and* decodes faster in
    it, else float32. Decoding one token at a time is matrix-vector work, bound by the bytes of
    weights read, so bfloat16 (half the bytes) should be about twice as fast; but torch's bf16
    matrix-vector kernels have measured three times *slower* than float32 on one AMX Xeon and
    twice faster on an AVX512-BF16 EPYC (docs/generation.md). So it is measured, once per
    process (a few hundredths of a second): the same matrix-vector products, larger than a
    core's caches, in both dtypes, on one thread (two threads syncing per product measure the
    machine's other load more than the kernels); bfloat16 must win by 15%."""
    from ft_models.device import cpu_has_fast_bf16, import_torch

    if not cpu_has_fast_bf16():
        return "float32"
    torch = import_torch()
    rates = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for dtype in (torch.float32, torch.bfloat16):
                # Written, not zeros: untouched zero pages all map to one page, in cache.
                weights = [torch.full((1536, 2048), 0.5, dtype=dtype) for _ in range(3)]
                vector = torch.full((1, 2048), 0.5, dtype=dtype)
                best = float("inf")
                for _ in range(4):  # the first sweep warms up (and is usually the slowest)
                    started = time.perf_counter()
                    for weight in weights:
                        torch.nn.functional.linear(vector, weight)
                    best = min(best, time.perf_counter() - started)
                rates[dtype] = best
    finally:
        torch.set_num_threads(threads)
    return "bfloat16" if rates[torch.float32] >= 1.15 * rates[torch.bfloat16] else "float32"


def _check_fits(model: Any, folder: Path) -> None:
    # peft adapts the modules it finds and only warns about tensors it has no place for, so an
    # adapter of another model could load half-applied: check every LoRA pair first, from the
    # shapes in the file's header (no values read).
    from ft_models.adapters import adapted_modules, adapter_weights
    from ft_models.safetensors_io import read_header

    entries = read_header(adapter_weights(folder)).tensors
    modules = adapted_modules(entries, folder, strict=False)
    for module, roles in sorted(modules.items()):
        out_features, in_features = entries[roles["B"]].shape[0], entries[roles["A"]].shape[-1]
        try:
            weight = getattr(model.get_submodule(module), "weight", None)
        except AttributeError:
            weight = None
        if weight is None:
            raise GenerationError(
                f"adapter {folder} adapts {module}, which this model does not have: "
                "was it trained on another base model?"
            )
        # A Linear stores (out, in); transformers' Conv1D (GPT-2) stores (in, out).
        if tuple(weight.shape) not in ((out_features, in_features), (in_features, out_features)):
            raise GenerationError(
                f"adapter {folder}: {module} is {out_features}x{in_features} in the adapter "
                f"but {tuple(weight.shape)} in the model: was it trained on another base model?"
            )


def _check_lora(model: Any, folder: Path) -> None:
    from ft_models.adapters import read_adapter_config

    with adapter_errors():
        config = read_adapter_config(folder)
        if not config.is_lora:
            raise GenerationError(
                f"adapter {folder} is a {config.peft_type} adapter; ft generates with LoRA "
                "adapters only. Merge it into the model with peft, or export the run with "
                "`ft export`."
            )
        _check_fits(model, folder)


def apply_adapter_torch(model: Any, folder: Path) -> Any:
    """The transformers model with the PEFT adapter in `folder` (LoRA or DoRA) merged in."""
    folder = Path(folder)
    _check_lora(model, folder)
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError("applying an adapter on torch needs peft: pip install peft") from error
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as error:
        # peft's own words (size mismatch, missing module) after ft's: which adapter, and why.
        raise GenerationError(
            f"adapter {folder} does not fit this model (was it trained on another base "
            f"model?): {str(error).strip().splitlines()[0][:300]}"
        ) from error
    return wrapped.merge_and_unload()


__all__ = [
    "TorchAdapters",
    "TorchBatch",
    "TorchLM",
    "apply_adapter_torch",
    "cpu_decode_dtype",
    "torch_generation_dtype",
]
