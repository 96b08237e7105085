"""The models the OpenAI-compatible routes serve, loaded on first use, and the generation loop
they run (`ft_server.openai_api` turns its events into OpenAI's JSON).

- What is served: `ServerSettings.inference_allow`. An entry is a base model (a name as `ft`
  takes it: catalog alias, local folder, Hub repo id) or a run id / glob of run ids; `*` serves
  every completed run. A completed run's adapter is served when its id or its base model is
  allowed, under the run id, with `parent` = its base model. Nothing else is ever loaded: a
  client names a model by id, never by path.
- Each model has one worker thread: it loads the model (on the first request naming it) and
  runs its generations one after the other (MLX arrays stay on the thread that made them). The
  requests waiting for it are counted; past `max_inference_queue` a new one is a 429.
- The loop is ft-models' (`Generator.lm` one step at a time, `Sampler`, `IncrementalDecoder`,
  `StopFilter`), with what the server adds: log-probabilities, a grammar mask for
  `response_format` (llguidance), and a cancel flag checked before every step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ft_models.generate import (
    GenerationError,
    GenerationOptions,
    Generator,
    IncrementalDecoder,
    PromptTemplate,
    Sampler,
    StopFilter,
)
from ft_server.errors import ApiError
from ft_server.settings import ServerSettings

_GLOB = set("*?[")


@attrs.frozen
class ServedModel:
    """One entry of /v1/models."""

    id: str
    base: str
    """What Generator.load takes: the base model's name or folder."""
    adapter: Path | None = None
    parent: str | None = None
    created: int = 0
    template: str | None = None
    """A chat template's source (the one the run was trained with); None: the tokenizer's."""


def served_models(settings: ServerSettings, store: Any = None) -> dict[str, ServedModel]:
    """The models `settings.inference_allow` lets the server load, by id (see module doc).
    `store`: the JobStore to read runs from (None: the one of `settings.paths`)."""
    allow = tuple(settings.inference_allow)
    models: dict[str, ServedModel] = {}
    for entry in allow:
        if not _GLOB & set(entry):
            models[entry] = ServedModel(id=entry, base=entry)
    for run in _completed_runs(settings, store):
        if not (
            "*" in allow
            or run.parent in allow
            or any(fnmatch.fnmatchcase(run.id, entry) for entry in allow)
        ):
            continue
        models.pop(run.id, None)  # an entry naming a run is that run, not a base model
        models[run.id] = run
        if run.parent is not None and run.parent not in models:
            models[run.parent] = ServedModel(id=run.parent, base=run.base, created=run.created)
    return models


def _completed_runs(settings: ServerSettings, store: Any = None) -> list[ServedModel]:
    from ft_runs.exports import RunExportError, run_source
    from ft_runs.run_folder import RunFolder
    from ft_runs.store import JobStore

    if store is None:
        if not settings.paths.database.is_file():
            return []
        store = JobStore(settings.paths.database)
    runs = []
    for record in store.list_runs(status="completed"):
        folder = RunFolder(Path(record.run_dir))
        adapter = Path(record.adapter_path) if record.adapter_path else folder.adapter
        if not (adapter / "adapter_config.json").is_file():
            continue  # a full fine-tune or a run without its final adapter: no adapter to serve
        try:
            source = run_source(folder)
        except (RunExportError, OSError, ValueError):
            continue  # its base model is gone: not servable
        runs.append(
            ServedModel(
                id=record.id,
                base=str(source.base),
                adapter=adapter,
                parent=record.model,
                created=int(record.ended_at or record.created_at),
                template=source.chat_template,
            )
        )
    return runs


# -- the generation loop ---------------------------------------------------------------------


@attrs.frozen
class TokenLogprob:
    token: str
    """The token's text (a token that is part of a character decodes to U+FFFD)."""
    logprob: float
    bytes: tuple[int, ...] = ()
    """The token's own bytes (of a byte-level BPE token: exact, even for part of a character)."""
    top: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class Delta:
    """Text that is safe to show (no part of a stop string), and the tokens that made it."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class Finished:
    finish_reason: str
    """'stop', 'length', or 'cancelled' (the client went away)."""
    prompt_tokens: int
    completion_tokens: int


@attrs.frozen
class Request:
    """One generation: the prompt's ids and how to pick tokens."""

    prompt_ids: tuple[int, ...]
    options: GenerationOptions
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None
    """An llguidance grammar the answer must follow (response_format)."""


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (the inverse of bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


def _token(
    tokenizer: Any, token: int, logprob: float, top: tuple[TokenLogprob, ...] = ()
) -> TokenLogprob:
    text = str(tokenizer.decode([token], skip_special_tokens=False))
    raw = text.encode("utf-8")
    if _byte_level(tokenizer) and token not in getattr(tokenizer, "all_special_ids", ()):
        piece = tokenizer.convert_ids_to_tokens(token)
        table = _byte_decoder()
        if isinstance(piece, str) and all(c in table for c in piece):
            raw = bytes(table[c] for c in piece)
    return TokenLogprob(text, logprob, tuple(raw), top)


def _logprobs(tokenizer: Any, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    scores = logits.astype(np.float64)
    finite = scores[np.isfinite(scores)]
    peak = finite.max() if finite.size else 0.0
    logz = peak + np.log(np.sum(np.exp(finite - peak)))
    best: tuple[TokenLogprob, ...] = ()
    if top > 0:
        top = min(top, scores.shape[0])
        ids = np.argpartition(-scores, top - 1)[:top]
        ids = ids[np.lexsort((ids, -scores[ids]))]  # most likely first, ties by id
        best = tuple(_token(tokenizer, int(i), float(scores[i] - logz)) for i in ids)
    return _token(tokenizer, token, float(scores[token] - logz), best)


def generation_steps(
    generator: Generator,
    request: Request,
    cancel: threading.Event,
    matcher_of: Callable[[str], Any] | None = None,
) -> Iterator[Delta | Finished]:
    """Generate, yielding Deltas and, last, Finished. Checks `cancel` before every model step."""
    ids = list(request.prompt_ids)
    options = request.options
    sampler = Sampler(options, ids)
    decoder = IncrementalDecoder(generator.tokenizer)
    stops = StopFilter(options.stop)
    matcher = matcher_of(request.grammar) if request.grammar is not None and matcher_of else None
    tokens: list[int] = []
    pending: list[TokenLogprob] = []
    finish = "length"
    if cancel.is_set():
        yield Finished("cancelled", len(ids), 0)
        return
    logits = generator.lm.start(ids)
    while True:
        raw = logits
        if matcher is not None:
            logits = matcher.mask(logits)
        token = sampler(logits)
        tokens.append(token)
        if token in generator.eos_ids:
            finish = "stop"
            break
        if request.logprobs:
            pending.append(_logprobs(generator.tokenizer, raw, token, request.top_logprobs))
        if matcher is not None:
            matcher.consume(token)
        if text := stops.push(decoder.push(token)):
            yield Delta(text, tuple(pending))
            pending = []
        if stops.matched is not None or (matcher is not None and matcher.done()):
            finish = "stop"
            break
        if len(tokens) >= options.max_tokens:
            break
        if cancel.is_set():
            yield Finished("cancelled", len(ids), len(tokens))
            return
        logits = generator.lm.step(token)
    if stops.matched is None:
        tail = stops.finish(decoder)
        if stops.matched is not None:
            finish = "stop"
        if tail:
            yield Delta(tail, tuple(pending))
    yield Finished(finish, len(ids), len(tokens))


# -- constrained decoding (response_format) --------------------------------------------------


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The llguidance grammar of JSON following `schema` (None: any JSON object)."""
    llguidance = _llguidance()
    try:
        return str(
            llguidance.LLMatcher.grammar_from_json_schema(
                schema if schema is not None else {"type": "object"},
                defaults={"whitespace_flexible": False},
            )
        )
    except ValueError as error:
        raise ApiError(
            400, f"response_format: the JSON schema is not usable: {error}", param="response_format"
        ) from None


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ApiError(
            400,
            "response_format needs llguidance on the server: pip install llguidance",
            param="response_format",
            code="unsupported_response_format",
        ) from None
    return llguidance


class GrammarMatcher:
    """An llguidance matcher over a generator's vocabulary: masks logits, follows tokens."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.numpy as llnp

        self._llnp = llnp
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise GenerationError(f"response_format: {self.matcher.get_error()}")
        self.vocab = int(tokenizer.vocab_size)
        self.bitmask = llnp.allocate_token_bitmask(1, self.vocab)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        self._llnp.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.vocab]
        allowed = np.zeros(logits.shape[0], dtype=bool)
        size = min(self.vocab, logits.shape[0])
        allowed[:size] = bits[:size].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(np.float32)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GenerationError(f"response_format: {self.matcher.get_error()}")

    def done(self) -> bool:
        return bool(self.matcher.is_stopped())


# -- loaded models and their queues ----------------------------------------------------------


class LoadedModel:
    """A served model's worker thread, its Generator once loaded, and its queue count."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ft-infer-{model.id}"[:40]
        )
        self.generator: Generator | None = None
        self.loading = asyncio.Lock()
        self.admitted = 0
        """Requests taken for this model and not finished (the running one included)."""
        self._grammar_tokenizer: Any = None

    def matcher(self, grammar: str) -> GrammarMatcher:
        assert self.generator is not None
        if self._grammar_tokenizer is None:
            import llguidance.hf

            try:
                self._grammar_tokenizer = llguidance.hf.from_tokenizer(self.generator.tokenizer)
            except ValueError as error:
                raise GenerationError(f"response_format: {error}") from None
        return GrammarMatcher(self._grammar_tokenizer, grammar)


class Inference:
    """The served models, loaded on first use; `app.state.inference`."""

    def __init__(self, settings: ServerSettings, *, backend: str = "auto") -> None:
        self.settings = settings
        self.backend = backend
        self.max_queue = settings.max_inference_queue
        self._loaded: dict[str, LoadedModel] = {}
        self._store: Any = None
        self.last: Finished | None = None
        """How the last generation ended (tests and the log read it)."""

    def models(self) -> dict[str, ServedModel]:
        """The served models, read afresh (a run that just completed is there). Blocking: call
        it off the event loop."""
        if self._store is None and self.settings.paths.database.is_file():
            from ft_runs.store import JobStore

            self._store = JobStore(self.settings.paths.database)
        if self._store is None:
            return served_models(self.settings, _NoRuns())
        return served_models(self.settings, self._store)

    def find(self, model_id: str) -> ServedModel:
        models = self.models()
        if model_id not in models:
            served = (
                ", ".join(sorted(models)) or "none (the server's inference allow-list is empty)"
            )
            raise ApiError(
                404,
                f"The model `{model_id}` does not exist or is not served here. Served: {served}. "
                "GET /v1/models lists them; the server's allow-list (--allow-model) decides "
                "what may be loaded.",
                code="model_not_found",
                param="model",
            )
        return models[model_id]

    async def loaded(self, model_id: str) -> LoadedModel:
        """The model, loaded on its worker thread on first use (ApiError when it cannot be)."""
        served = await asyncio.to_thread(self.find, model_id)
        entry = self._loaded.get(model_id)
        if entry is None or entry.model != served:
            if entry is not None:  # the id now means another model (a run was redone): let go
                entry.executor.shutdown(wait=False)
            entry = self._loaded[model_id] = LoadedModel(served)
        async with entry.loading:
            if entry.generator is None:
                loop = asyncio.get_running_loop()
                try:
                    entry.generator = await loop.run_in_executor(entry.executor, self._load, served)
                except (GenerationError, OSError, ValueError, ImportError) as error:
                    raise ApiError(
                        500,
                        f"model `{model_id}` could not be loaded: {error}",
                        code="model_load_failed",
                    ) from None
        return entry

    def _load(self, served: ServedModel) -> Generator:
        template = PromptTemplate(served.id, served.template) if served.template else None
        return Generator.load(
            served.base, backend=self.backend, adapter=served.adapter, template=template
        )

    async def run(
        self, entry: LoadedModel, requests: Sequence[Request], cancel: threading.Event
    ) -> AsyncIterator[tuple[int, Delta | Finished]]:
        """The events of each request in turn (choice index, event), generated on the model's
        thread. Admission is counted now: past the queue length, ApiError 429."""
        if entry.admitted > self.max_queue:
            raise ApiError(
                429,
                f"{entry.admitted - 1} requests are already waiting for `{entry.model.id}` "
                f"(the queue holds {self.max_queue}); retry shortly",
                code="queue_full",
                headers={"retry-after": "1"},
            )
        entry.admitted += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                cancel.set()

        def work() -> None:
            try:
                assert entry.generator is not None
                for index, request in enumerate(requests):
                    for event in generation_steps(entry.generator, request, cancel, entry.matcher):
                        if isinstance(event, Finished):
                            self.last = event
                        put((index, event))
                    if cancel.is_set():
                        break
            except BaseException as error:  # handed to the request's task
                put(error)
            finally:
                put(end)

        future = loop.run_in_executor(entry.executor, work)
        try:
            while True:
                item = await events.get()
                if item is end:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, GenerationError):
                        raise ApiError(400, str(item)) from None
                    raise item
                yield item
        finally:
            cancel.set()  # the client went away or the route failed: stop within a step
            entry.admitted -= 1
            future.add_done_callback(lambda f: f.exception())  # never "never retrieved"

    async def close(self) -> None:
        for entry in self._loaded.values():
            entry.executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()


class _NoRuns:
    def list_runs(self, **_: Any) -> list[Any]:
        return []


def now() -> int:
    return int(time.time())


__all__ = [
    "Delta",
    "Finished",
    "GrammarMatcher",
    "Inference",
    "LoadedModel",
    "Request",
    "ServedModel",
    "TokenLogprob",
    "generation_steps",
    "json_grammar",
    "served_models",
]
