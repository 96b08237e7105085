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

A PEFT LoRA or DoRA adapter folder (adapter_config.json + adapter_model.safetensors, read
through `ft_models.adapters`) is merged with peft on torch and into the weights on MLX, the same
way, so one adapter gives the same tokens on both.

This module is the public one; the parts live in `ft_models.generation` (options, sampling,
streaming, templates, and one module per backend). torch, transformers, peft, mlx and mlx-lm
are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator as GeneratorFunction
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ft_models.adapters import AdapterConfig
from ft_models.device import BACKENDS
from ft_models.generation.mlx_backend import MlxLM, merge_adapter_mlx
from ft_models.generation.options import (
    FinishReason,
    GenerationError,
    GenerationOptions,
    GenerationResult,
    Message,
    Prompt,
    adapter_errors,
)
from ft_models.generation.sampling import Sampler
from ft_models.generation.streaming import GenerationStream, IncrementalDecoder, StopFilter
from ft_models.generation.templates import (
    TEMPLATES_GROUP,
    PromptTemplate,
    load_template,
    template_names,
)
from ft_models.generation.torch_backend import (
    TorchLM,
    apply_adapter_torch,
    torch_generation_dtype,
)


def read_adapter_config(folder: Path) -> AdapterConfig:
    """The config of the PEFT adapter in `folder`, checked to come with safetensors weights
    (see `ft_models.adapters`); GenerationError says what is wrong."""
    from ft_models import adapters

    with adapter_errors():
        config = adapters.read_adapter_config(folder)
        adapters.adapter_weights(folder)
    return config


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
        compile: bool | str = "cached",
    ) -> Generator:
        """Load `model` (a local folder, catalog alias, Hub repo id or `.gguf` file: see
        `ft_models.resolve.resolve_model`) on `backend` (auto, torch or mlx), with an optional
        PEFT LoRA or DoRA adapter folder, in `dtype` (None or "auto": on torch, on a CPU
        bfloat16 where it decodes faster (`cpu_decode_dtype`) else float32, else what the device
        computes best; on MLX, the saved dtype). `template` names the
        chat template for message prompts (None: the tokenizer's). `device` is torch's (auto,
        cpu, cuda, mps). `compile` is torch's compiled decode step on a CPU (`TorchLM`): True
        builds it when first needed, "cached" (the default) uses it where an earlier process
        built it, False never; call `generator.lm.warm()` to build it in the background."""
        from ft_models.device import pick_backend
        from ft_models.load import is_classifier, load_mlx, load_torch, read_config
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
        config = read_config(resolved.path)
        if is_classifier(config):
            raise GenerationError(
                f"{resolved.path} is a sequence classifier ({config.get('model_type')}): it "
                "labels text, it does not generate. Score it with ft evaluate, or give a causal "
                "language model (docs/architectures.md)"
            )
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
                dtype=dtype or torch_generation_dtype(device),
                device=device,
                trust_remote_code=remote,
            )
            if adapter_path is not None:
                loaded = apply_adapter_torch(loaded, adapter_path)
            lm = TorchLM(loaded, compile=compile)
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
        ids, options = self._prepare(prompt, options)
        return GenerationStream(self._steps(ids, options))

    def _prepare(
        self, prompt: Prompt, options: GenerationOptions | None
    ) -> tuple[list[int], GenerationOptions]:
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
        return ids, options

    def generate_many(
        self,
        prompts: Sequence[Prompt],
        options: GenerationOptions | Sequence[GenerationOptions] | None = None,
    ) -> list[GenerationResult]:
        """Answer every prompt, decoded together: one forward pass per step over the answers
        not yet finished (`lm.batch()`: each prompt is read alone, then joins the batch). Each
        answer is the one `generate` gives alone: the same tokens at temperature 0, the same
        draws for the same seed. `options`: one for all, or one per prompt."""
        if options is None or isinstance(options, GenerationOptions):
            options = [options or GenerationOptions()] * len(prompts)
        if len(options) != len(prompts):
            raise GenerationError(f"{len(prompts)} prompts but {len(options)} options")
        rows = [_Row(self, *self._prepare(p, o)) for p, o in zip(prompts, options, strict=True)]
        batch = self.lm.batch()
        logits = {}
        for index, row in enumerate(rows):
            if index and not batch.can_join():  # a model whose cache cannot be batched
                return [self.generate(r.ids, r.options) for r in rows]
            logits[index] = batch.add(index, row.ids)
            row.read = time.perf_counter()
        while len(batch):
            feed = {}
            for index in list(batch.keys):
                token = rows[index].advance(logits[index])
                if token is None:
                    batch.remove(index)
                else:
                    feed[index] = token
            if feed:
                logits = batch.step(feed)
        return [row.result() for row in rows]

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
            tail = stops.finish(decoder)
            if stops.matched is not None:
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


class _Row:
    """One answer of `generate_many`: `Generator._steps`' rule, one token at a time."""

    def __init__(self, generator: Generator, ids: list[int], options: GenerationOptions) -> None:
        self.eos_ids = generator.eos_ids
        self.ids, self.options = ids, options
        self.sampler = Sampler(options, ids)
        self.decoder = IncrementalDecoder(generator.tokenizer)
        self.stops = StopFilter(options.stop)
        self.tokens: list[int] = []
        self.finish: FinishReason = "length"
        self.started = self.read = time.perf_counter()
        self.done = self.started

    def advance(self, logits: Any) -> int | None:
        """Pick the next token; it, or None when the answer is finished."""
        token = self.sampler(logits)
        self.tokens.append(token)
        if token in self.eos_ids:
            self.finish = "stop"
        else:
            self.stops.push(self.decoder.push(token))
            if self.stops.matched is not None:
                self.finish = "stop"
            elif len(self.tokens) < self.options.max_tokens:
                return token
        if self.stops.matched is None:
            self.stops.finish(self.decoder)
            if self.stops.matched is not None:
                self.finish = "stop"
        self.done = time.perf_counter()
        return None

    def result(self) -> GenerationResult:
        decode_s = self.done - self.read
        count = len(self.tokens)
        return GenerationResult(
            text=self.stops.text,
            tokens=tuple(self.tokens),
            finish_reason=self.finish,
            prompt_tokens=len(self.ids),
            tokens_per_s=(count - 1) / decode_s if count > 1 and decode_s > 0 else 0.0,
            prompt_tokens_per_s=0.0,
            elapsed_s=self.done - self.started,
            stop=self.stops.matched,
        )


__all__ = [
    "TEMPLATES_GROUP",
    "FinishReason",
    "GenerationError",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "Generator",
    "IncrementalDecoder",
    "Message",
    "MlxLM",
    "Prompt",
    "PromptTemplate",
    "Sampler",
    "StopFilter",
    "TorchLM",
    "apply_adapter_torch",
    "context_length_of",
    "eos_token_ids",
    "load_template",
    "merge_adapter_mlx",
    "read_adapter_config",
    "template_names",
]
