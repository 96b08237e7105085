"""Text generation over both backends: one API, one sampler, streaming with stop strings.

    generator = Generator.load("smollm2-135m", backend="auto", adapter=None)
    result = generator.generate(
        [{"role": "user", "content": "What is the capital of France?"}],
        GenerationOptions(max_tokens=20),
    )
    for delta in generator.stream("Once upon a time", GenerationOptions(temperature=0.8, seed=1)):
        print(delta, end="")

How it works, the same way on torch and on MLX:

- The prompt is token ids: a string is encoded as is (with the tokenizer's special tokens, as
  ft-data encodes plain text for training); a list of chat messages is rendered first, through
  the tokenizer's chat template or a named one (`template="chatml"`, any name of the
  `ft.templates` entry point group, or a `.jinja` file), so a model is prompted the way it was
  trained.
- The backend only runs the model: a prefill over the prompt, then one token at a time against
  its KV cache (transformers' `past_key_values`, mlx-lm's prompt cache). It hands back the last
  position's logits as a numpy vector.
- `Sampler` picks the next token from those logits, in transformers' order: repetition penalty,
  then greedy (temperature 0) or temperature, top-k, top-p and a draw from a seeded numpy
  generator. One sampler for both backends, so options mean exactly the same on each.
- Text is decoded incrementally (`IncrementalDecoder`) and passed through `StopFilter`, which
  holds back any tail that could be the start of a stop string: a stream never shows text that
  a stop string later cuts.

A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) is applied with peft on
torch and merged into the weights on MLX (W += scale * B @ A), so one adapter gives the same
tokens on both.

torch, transformers, peft, mlx and mlx-lm are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Generator as GeneratorFunction
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from ft_models.device import BACKENDS

FinishReason = Literal["stop", "length"]
Message = Mapping[str, Any]
Prompt = str | Sequence[Message] | Sequence[int]
"""Text, chat messages, or token ids already rendered (e.g. a prompt cut from prepared data)."""

TEMPLATES_GROUP = "ft.templates"
"""The entry point group chat templates are registered in (ft-data's built-ins and plugins)."""

# How many prompt tokens MLX runs through the model at once: bounds the prefill's memory.
_MLX_PREFILL_CHUNK = 512


class GenerationError(ValueError):
    """Generation cannot run as asked: what is wrong and what to do."""


def _positive_int(name: str, minimum: int) -> Any:
    def check(_: Any, __: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise GenerationError(f"{name} must be an integer >= {minimum}, not {value!r}")

    return check


def _stops(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class GenerationOptions:
    """How to pick tokens. The defaults give greedy decoding of up to 256 tokens."""

    max_tokens: int = attrs.field(default=256, validator=_positive_int("max_tokens", 1))
    """The most tokens to generate; reaching it ends with finish_reason 'length'."""
    temperature: float = 0.0
    """0 is greedy (the most likely token, always); higher is more random."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probabilities add up to top_p."""
    top_k: int = attrs.field(default=0, validator=_positive_int("top_k", 0))
    """Sample only from the k most likely tokens (0: no limit)."""
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the prompt or the answer less likely (transformers' rule:
    a positive logit is divided by it, a negative one multiplied)."""
    stop: tuple[str, ...] = attrs.field(default=(), converter=_stops)
    """Strings that end the answer; the answer is cut just before the first one."""
    seed: int | None = None
    """Seed of the sampler's random numbers: the same seed gives the same text."""

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"temperature must be >= 0, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(
                f"repetition_penalty must be > 0 (1 is off), not {self.repetition_penalty!r}"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise GenerationError(f"stop strings must be non-empty strings, not {self.stop!r}")


@attrs.frozen
class GenerationResult:
    """What one generation produced."""

    text: str
    """The answer: special tokens left out, cut before the stop string that ended it."""
    tokens: tuple[int, ...]
    """Every token id the model produced, including an end-of-sequence token or the tokens of a
    stop string that ended it."""
    finish_reason: FinishReason
    """'stop' (end-of-sequence token or stop string) or 'length' (max_tokens reached)."""
    prompt_tokens: int
    tokens_per_s: float
    """Decoding speed: tokens generated after the first, per second after the prompt was read."""
    prompt_tokens_per_s: float = 0.0
    """Prefill speed: prompt tokens per second of the first forward pass."""
    elapsed_s: float = 0.0
    stop: str | None = None
    """The stop string that ended the answer, if one did."""


# -- sampling ---------------------------------------------------------------------------------


class Sampler:
    """Picks each next token from a logits vector, remembering which tokens were seen (for the
    repetition penalty). Greedy when temperature is 0; else a seeded draw."""

    def __init__(self, options: GenerationOptions, prompt_ids: Sequence[int]) -> None:
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self.seen: set[int] = set(int(i) for i in prompt_ids)

    def __call__(self, logits: np.ndarray) -> int:
        options = self.options
        scores = np.asarray(logits, dtype=np.float32).copy()
        if options.repetition_penalty != 1.0 and self.seen:
            ids = np.fromiter((i for i in self.seen if i < scores.shape[0]), dtype=np.int64)
            picked = scores[ids]
            scores[ids] = np.where(
                picked < 0, picked * options.repetition_penalty, picked / options.repetition_penalty
            )
        if options.temperature == 0:
            token = int(np.argmax(scores))
        else:
            token = self._draw(scores.astype(np.float64) / options.temperature)
        self.seen.add(token)
        return token

    def _draw(self, scores: np.ndarray) -> int:
        options = self.options
        order = np.argsort(-scores, kind="stable")  # most likely first, ties by id
        if options.top_k > 0:
            # transformers keeps every token that ties with the k-th.
            kth = scores[order[min(options.top_k, order.shape[0]) - 1]]
            order = order[scores[order] >= kth]
        kept = scores[order]
        probs = np.exp(kept - kept[0])
        probs /= probs.sum()
        if options.top_p < 1.0:
            # Keep the smallest prefix whose probability reaches top_p (at least one token).
            before = np.cumsum(probs) - probs
            count = max(1, int(np.count_nonzero(before < options.top_p)))
            order, probs = order[:count], probs[:count] / probs[:count].sum()
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(order[min(index, order.shape[0] - 1)])


# -- text: incremental decoding and stop strings ----------------------------------------------


class IncrementalDecoder:
    """Token ids in, text deltas out; the deltas join to `decode(ids, skip_special_tokens)`.

    Each new token is decoded together with the tokens just before it, and only the new part is
    emitted: decoding one token alone loses the space a SentencePiece tokenizer puts before a
    word, and a multi-byte character split over tokens waits until it is whole.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if after.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 character: wait for the rest
        delta = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


class StopFilter:
    """Text in, text out, cut before the first stop string. It holds back a tail that could be
    the start of a stop string until the next text settles it, so nothing it lets out is ever
    taken back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.emitted = 0
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        """The text that is now safe to show; sets `matched` when a stop string appeared."""
        self.text += delta
        # No stop string starts before `emitted` (it would have been held back), so search
        # from there; the earliest match wins.
        found: tuple[int, str] | None = None
        for stop in self.stops:
            index = self.text.find(stop, self.emitted)
            if index >= 0 and (found is None or index < found[0]):
                found = (index, stop)
        if found is not None:
            self.text, self.matched = self.text[: found[0]], found[1]
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def flush(self) -> str:
        """The rest of the text, at the end of generation."""
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        longest = 0
        pending = len(self.text) - self.emitted
        for stop in self.stops:
            for size in range(min(len(stop) - 1, pending), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        out, self.emitted = self.text[self.emitted : end], end
        return out


# -- chat templates ---------------------------------------------------------------------------


@attrs.frozen
class PromptTemplate:
    """A Jinja chat template to render messages with (ft-data's `ChatTemplate` has the same
    `name` and `source`, and can be passed as is)."""

    name: str
    source: str


def template_names() -> list[str]:
    """The names of the registered chat templates (`ft.templates` entry points), sorted."""
    return sorted({point.name for point in entry_points(group=TEMPLATES_GROUP)})


def load_template(template: str | Path | Any | None) -> PromptTemplate | None:
    """The chat template `template` names: None, "auto" or "tokenizer" -> None (the
    tokenizer's own); a registered name (`chatml`, `llama3`, `mistral`, `alpaca`, or a
    plugin's); the path of a Jinja file; or an object with `name` and `source` (ft-data's
    `ChatTemplate`). Raises GenerationError naming what exists."""
    if template is None or (isinstance(template, str) and template in ("auto", "tokenizer")):
        return None
    if not isinstance(template, str | Path):
        source = getattr(template, "source", None)
        if not isinstance(source, str):
            raise GenerationError(
                f"template must be a name, a .jinja file or a template with a `source`, not "
                f"{type(template).__name__}"
            )
        return PromptTemplate(str(getattr(template, "name", "template")), source)
    name = str(template)
    for point in entry_points(group=TEMPLATES_GROUP):
        if point.name == name:
            return load_template(point.load()())
    path = Path(template).expanduser()
    if path.is_file():
        return PromptTemplate(path.name, path.read_text(encoding="utf-8"))
    names = ", ".join(["tokenizer", *template_names()])
    raise GenerationError(
        f"unknown chat template {name!r}: choose one of {names}, or give a .jinja file"
    )


# -- backends ---------------------------------------------------------------------------------


class TorchLM:
    """A transformers causal LM run one step at a time against its KV cache."""

    backend = "torch"

    def __init__(self, model: Any) -> None:
        import inspect

        self.model = model
        self.cache: Any = None
        accepted = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name is deprecated).
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # Only the last position's logits are needed: a long prompt need not make a
        # (length x vocabulary) matrix.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        inputs = torch.tensor([list(ids)], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = self.model(
                input_ids=inputs, use_cache=True, **{self._cache_arg: self.cache}, **self._extra
            )
        self.cache = getattr(out, self._cache_arg)
        return out.logits[0, -1].float().cpu().numpy()  # type: ignore[no-any-return]

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read the prompt into a fresh cache; the logits of the token after it."""
        self.cache = None
        return self._forward(prompt_ids)

    def step(self, token: int) -> np.ndarray:
        """Feed one token; the logits of the token after it."""
        return self._forward([token])


class MlxLM:
    """An mlx-lm model run one step at a time against its prompt cache."""

    backend = "mlx"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array([list(ids)]), cache=self.cache)[0, -1]
        return np.array(logits.astype(mx.float32))

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        self.cache = make_prompt_cache(self.model)
        ids = list(prompt_ids)
        while len(ids) > _MLX_PREFILL_CHUNK:
            self.model(mx.array([ids[:_MLX_PREFILL_CHUNK]]), cache=self.cache)
            mx.eval([c.state for c in self.cache])
            ids = ids[_MLX_PREFILL_CHUNK:]
        return self._forward(ids)

    def step(self, token: int) -> np.ndarray:
        return self._forward([token])


# -- adapters ---------------------------------------------------------------------------------


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The adapter_config.json of a PEFT adapter folder, checked to hold safetensors weights."""
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise GenerationError(f"adapter {folder}: no such folder")
    if not config_file.is_file():
        hint = (
            " (it holds config.json: it is a full model, give it as the model instead)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise GenerationError(
            f"adapter {folder} has no adapter_config.json: a PEFT adapter folder holds "
            f"adapter_config.json and adapter_model.safetensors{hint}"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise GenerationError(
            f"adapter {folder} has no adapter_model.safetensors"
            + (" (only adapter_model.bin, a pickle, which ft never loads)" if pickled else "")
        )
    config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    return config


def _check_lora(folder: Path, config: dict[str, Any], backend: str) -> None:
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise GenerationError(
            f"adapter {folder} is a {kind} adapter; ft generates with LoRA adapters only. "
            "Merge it into the model with peft, or export the run with `ft export`."
        )
    if backend == "mlx" and config.get("use_dora"):
        raise GenerationError(
            f"adapter {folder} is a DoRA adapter, which ft does not merge on MLX yet: "
            "use --backend torch"
        )


def lora_pairs(folder: Path, keys: Iterable[str], *, strict: bool) -> dict[str, dict[str, str]]:
    """Module name -> {"A": key, "B": key} for the LoRA tensors of an adapter. `strict`: any
    other tensor (modules_to_save, embedding adapters) is an error, for merging on MLX."""
    pairs: dict[str, dict[str, str]] = {}
    for key in keys:
        name = key.removeprefix("base_model.model.")
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
        if match is None:
            if strict:
                raise GenerationError(
                    f"adapter {folder}: tensor {key} is not a LoRA A/B matrix, and ft merges "
                    "only those on MLX (modules_to_save and embedding adapters need "
                    "--backend torch)"
                )
            continue
        pairs.setdefault(match.group(1), {})[match.group(2)] = key
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise GenerationError(f"adapter {folder}: {module} lacks its lora_A or lora_B")
    return pairs


def _check_fits_torch(model: Any, folder: Path) -> None:
    # peft adapts the modules it finds and only warns about tensors it has no place for, so an
    # adapter of another model could load half-applied: check every LoRA pair first.
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as tensors:
        pairs = lora_pairs(folder, tensors.keys(), strict=False)
        shapes = {
            module: (
                tensors.get_slice(pair["B"]).get_shape()[0],
                tensors.get_slice(pair["A"]).get_shape()[-1],
            )
            for module, pair in pairs.items()
        }
    for module, (out_features, in_features) in sorted(shapes.items()):
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


def apply_adapter_torch(model: Any, folder: Path) -> Any:
    """The transformers model with the PEFT LoRA adapter in `folder` merged in."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    _check_lora(folder, config, "torch")
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError("applying an adapter on torch needs peft: pip install peft") from error
    _check_fits_torch(model, folder)
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as error:
        # peft's own words (size mismatch, missing module) after ft's: which adapter, and why.
        raise GenerationError(
            f"adapter {folder} does not fit this model (was it trained on another base "
            f"model?): {str(error).strip().splitlines()[0][:300]}"
        ) from error
    return wrapped.merge_and_unload()


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    # peft's rule for rank_pattern/alpha_pattern: a key matches a module name's tail.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def merge_adapter_mlx(model: Any, folder: Path) -> int:
    """Merge the PEFT LoRA adapter in `folder` into an mlx-lm model's weights
    (W += scale * B @ A, scale = lora_alpha / r, or / sqrt(r) with rsLoRA); return how many
    weight matrices changed. Raises GenerationError for tensors it has no place for."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    folder = Path(folder)
    config = read_adapter_config(folder)
    _check_lora(folder, config, "mlx")
    tensors = mx.load(str(folder / "adapter_model.safetensors"))
    pairs = {
        module: {side: tensors[key] for side, key in pair.items()}
        for module, pair in lora_pairs(folder, tensors, strict=True).items()
    }
    params = dict(tree_flatten(model.parameters()))
    rank, alpha = int(config.get("r", 8)), config.get("lora_alpha")
    updates = []
    for module, pair in sorted(pairs.items()):
        r = int(_pattern_value(config.get("rank_pattern") or {}, module, rank))
        a = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha or r))
        scale = a / math.sqrt(r) if config.get("use_rslora") else a / r
        # B @ A is (out, in), the layout of every MLX Linear weight (peft's fan_in_fan_out only
        # concerns transformers' Conv1D storage, which mlx-lm transposes on load).
        delta = (pair["B"].astype(mx.float32) @ pair["A"].astype(mx.float32)) * scale
        names = [f"{module}.weight", f"{module.removeprefix('transformer.')}.weight"]
        target = next((n for n in names if n in params), None)
        if target is None:
            raise GenerationError(
                f"adapter {folder} adapts {module}, which this model does not have: "
                "was it trained on another base model?"
            )
        weight = params[target]
        if tuple(weight.shape) != tuple(delta.shape):
            raise GenerationError(
                f"adapter {folder}: {module} is {tuple(delta.shape)} in the adapter but "
                f"{tuple(weight.shape)} in the model: was it trained on another base model?"
            )
        updates.append((target, (weight.astype(mx.float32) + delta).astype(weight.dtype)))
    model.load_weights(updates, strict=False)
    mx.eval(model.parameters())
    return len(updates)


# -- the generator ----------------------------------------------------------------------------


class GenerationStream(Iterator[str]):
    """Text deltas as they are generated; after the last one, `result` holds the
    GenerationResult (None until then)."""

    def __init__(self, steps: GeneratorFunction[str, None, GenerationResult]) -> None:
        self._steps = steps
        self.result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._steps)
        except StopIteration as done:
            self.result = done.value
            raise StopIteration from None

    def close(self) -> None:
        """Stop generating (the result stays None)."""
        self._steps.close()


def eos_token_ids(folder: Path | None, tokenizer: Any) -> frozenset[int]:
    """The token ids that end an answer: the tokenizer's eos token and every `eos_token_id`
    in the folder's config.json and generation_config.json."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    for name in ("config.json", "generation_config.json"):
        path = Path(folder) / name if folder is not None else None
        if path is None or not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        ids.update(int(v) for v in values if isinstance(v, int))
    return frozenset(ids)


def context_length_of(folder: Path) -> int | None:
    """The longest sequence the model in `folder` was built for (config.json's
    `max_position_embeddings`, or GPT-2's `n_positions`), or None when it does not say."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


def _torch_generation_dtype(device: str) -> str:
    # Decoding one token at a time is matrix-vector work: on a CPU, bfloat16 measured about 3x
    # slower than float32 here even with AMX (docs/generation.md), so CPUs get float32.
    from ft_models.device import pick_device

    return "float32" if pick_device(device).device == "cpu" else "auto"


def _unwrap_tokenizer(tokenizer: Any) -> Any:
    # mlx-lm wraps the transformers tokenizer; both backends use the same one underneath.
    if type(tokenizer).__module__.startswith("mlx_lm"):
        return tokenizer._tokenizer
    return tokenizer


class Generator:
    """A loaded model (torch or MLX) that generates text: see the module docstring."""

    def __init__(
        self,
        lm: TorchLM | MlxLM,
        tokenizer: Any,
        *,
        eos_ids: frozenset[int] | None = None,
        template: PromptTemplate | None = None,
        model_path: Path | None = None,
        adapter: Path | None = None,
        reason: str = "",
        context_length: int | None = None,
    ) -> None:
        self.tokenizer = _unwrap_tokenizer(tokenizer)
        self.context_length = context_length
        """The most tokens (prompt and answer) the model reads; None: unknown, unchecked."""
        self.lm = lm
        self.template = template
        self.model_path = model_path
        self.adapter = adapter
        self.reason = reason
        """How the model was found and which backend runs it, for people."""
        self.eos_ids = eos_ids if eos_ids is not None else eos_token_ids(None, self.tokenizer)

    @property
    def backend(self) -> str:
        return self.lm.backend

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        backend: str = "auto",
        adapter: str | Path | None = None,
        dtype: str | None = None,
        template: str | Path | Any | None = None,
        device: str = "auto",
        trust_remote_code: bool = False,
        progress: bool = False,
    ) -> Generator:
        """Load `model` (a local folder, catalog alias, Hub repo id or `.gguf` file: see
        `ft_models.resolve.resolve_model`) on `backend` (auto, torch or mlx), with an optional
        PEFT LoRA adapter folder, in `dtype` (None or "auto": on torch, float32 on a CPU, else
        what the device computes best; on MLX, the saved dtype). `template` names the chat
        template for message prompts (None: the tokenizer's). `device` is torch's (auto, cpu,
        cuda, mps)."""
        from ft_models.device import pick_backend
        from ft_models.load import load_mlx, load_torch
        from ft_models.resolve import resolve_model

        if backend not in BACKENDS:
            raise GenerationError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        chosen = pick_backend(backend)
        dtype = None if dtype == "auto" else dtype
        prompt_template = load_template(template)
        adapter_path = Path(adapter).expanduser() if adapter is not None else None
        if adapter_path is not None:
            read_adapter_config(adapter_path)  # fail before the model loads
        resolved = resolve_model(str(model), trust_remote_code=trust_remote_code, progress=progress)
        remote = True if trust_remote_code else None
        lm: TorchLM | MlxLM
        if chosen.backend == "mlx":
            loaded, tokenizer = load_mlx(resolved.path, dtype=dtype, trust_remote_code=remote)
            if adapter_path is not None:
                merge_adapter_mlx(loaded, adapter_path)
            lm = MlxLM(loaded)
        else:
            loaded, tokenizer = load_torch(
                resolved.path,
                dtype=dtype or _torch_generation_dtype(device),
                device=device,
                trust_remote_code=remote,
            )
            if adapter_path is not None:
                loaded = apply_adapter_torch(loaded, adapter_path)
            lm = TorchLM(loaded)
        unwrapped = _unwrap_tokenizer(tokenizer)
        return cls(
            lm,
            unwrapped,
            eos_ids=eos_token_ids(resolved.path, unwrapped),
            template=prompt_template,
            model_path=resolved.path,
            adapter=adapter_path,
            reason=f"{resolved.reason}; backend {chosen.backend} "
            + ("(asked for)" if backend == chosen.backend else f"({chosen.reason})"),
            context_length=context_length_of(resolved.path),
        )

    # -- prompts -------------------------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> str:
        """Chat messages as the prompt text, through the chat template, with the assistant's
        turn opened (add_generation_prompt)."""
        if isinstance(messages, str):
            raise GenerationError("render takes a list of messages, not a string")
        source = self.template.source if self.template is not None else None
        if source is None and not getattr(self.tokenizer, "chat_template", None):
            names = ", ".join(template_names())
            raise GenerationError(
                "this model's tokenizer has no chat template: name one (template= / --template: "
                f"{names}) or send the prompt as raw text (--raw)"
            )
        text = self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            chat_template=source,
            add_generation_prompt=True,
            tokenize=False,
        )
        return str(text)

    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids: a string with the tokenizer's special tokens (as ft-data
        encodes plain text); messages rendered by `render` (the template places them); a list
        of token ids as it is."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        elif prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)  # token ids: used as they are
        else:
            ids = self.tokenizer.encode(self.render(prompt), add_special_tokens=False)
        if not ids:
            raise GenerationError("the prompt is empty: give some text or a message")
        return [int(i) for i in ids]

    # -- generation ----------------------------------------------------------------------------

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> GenerationStream:
        """Generate, yielding text deltas as they are decided; the deltas join to the result's
        text, and none of them holds any part of a stop string."""
        ids = self.encode(prompt)
        options = options or GenerationOptions()
        limit = self.context_length
        if limit is not None:
            if len(ids) >= limit:
                raise GenerationError(
                    f"the prompt is {len(ids)} tokens and this model reads at most {limit}: "
                    "shorten it (in `ft chat`, /reset forgets the conversation)"
                )
            # The answer stops at the end of the context ('length'), not in an error.
            options = attrs.evolve(options, max_tokens=min(options.max_tokens, limit - len(ids)))
        return GenerationStream(self._steps(ids, options))

    def generate(
        self, prompt: Prompt, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Generate the whole answer."""
        stream = self.stream(prompt, options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _steps(
        self, prompt_ids: list[int], options: GenerationOptions
    ) -> GeneratorFunction[str, None, GenerationResult]:
        started = time.perf_counter()
        sampler = Sampler(options, prompt_ids)
        decoder = IncrementalDecoder(self.tokenizer)
        stops = StopFilter(options.stop)
        logits = self.lm.start(prompt_ids)
        read = time.perf_counter()
        tokens: list[int] = []
        finish: FinishReason = "length"
        while True:
            token = sampler(logits)
            tokens.append(token)
            if token in self.eos_ids:
                finish = "stop"
                break
            if text := stops.push(decoder.push(token)):
                yield text
            if stops.matched is not None:
                finish = "stop"
                break
            if len(tokens) >= options.max_tokens:
                break
            logits = self.lm.step(token)
        if stops.matched is None:
            tail = stops.push(decoder.flush())
            if stops.matched is None:
                tail += stops.flush()
            else:
                finish = "stop"
            if tail:
                yield tail
        done = time.perf_counter()
        decode_s = done - read
        return GenerationResult(
            text=stops.text,
            tokens=tuple(tokens),
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 and decode_s > 0 else 0.0,
            prompt_tokens_per_s=len(prompt_ids) / (read - started) if read > started else 0.0,
            elapsed_s=done - started,
            stop=stops.matched,
        )


__all__ = [
    "FinishReason",
    "GenerationError",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "Generator",
    "IncrementalDecoder",
    "MlxLM",
    "PromptTemplate",
    "Sampler",
    "StopFilter",
    "TorchLM",
    "apply_adapter_torch",
    "eos_token_ids",
    "load_template",
    "merge_adapter_mlx",
    "read_adapter_config",
    "template_names",
]
