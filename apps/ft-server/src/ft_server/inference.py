"""The models the OpenAI-compatible routes serve, loaded on first use, and the generation loop
they run (`ft_server.openai_api` turns its events into OpenAI's JSON).

- What is served: `ft_server.served` (`ServerSettings.inference_allow`).
- Each model has one worker thread: it loads the model (on the first request naming it) and
  runs its generations one after the other (MLX arrays stay on the thread that made them). The
  requests waiting for it are counted; past `max_inference_queue` a new one is a 429.
- The loop is ft-models' (`Generator.lm` one step at a time, `Sampler`, `IncrementalDecoder`,
  `StopFilter`), with what the server adds: log-probabilities, a grammar mask for
  `response_format` (`ft_server.grammar`), and a cancel flag checked before every step.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
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
from ft_server.grammar import GrammarMatcher
from ft_server.served import NoRuns, ServedModel, served_models
from ft_server.settings import ServerSettings

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


class Row:
    """One answer being generated (one choice of one request): ft-models' rule (`Sampler`,
    `IncrementalDecoder`, `StopFilter`, as `Generator._steps` applies it) one token at a time,
    plus what the server adds: log-probabilities, a grammar mask and the cancel flag. The
    scheduler hands it the logits of each step; it sends its events through `send`."""

    def __init__(
        self,
        request: Request,
        index: int,
        cancel: threading.Event,
        send: Callable[[int, Delta | Finished], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.request = request
        self.index = index
        self.cancel = cancel
        self.send = send
        self.fail = fail
        """Called with an error that ends this answer (and its request)."""
        self.ids = list(request.prompt_ids)
        self.tokens: list[int] = []
        self.pending: list[TokenLogprob] = []
        self.finished: Finished | None = None

    def start(self, generator: Generator, matcher_of: Callable[[str], Any] | None) -> None:
        """Set up on the model's thread (a grammar matcher can fail: GenerationError)."""
        options = self.request.options
        self.tokenizer = generator.tokenizer
        self.eos_ids = generator.eos_ids
        self.sampler = Sampler(options, self.ids)
        self.decoder = IncrementalDecoder(generator.tokenizer)
        self.stops = StopFilter(options.stop)
        grammar = self.request.grammar
        self.matcher = matcher_of(grammar) if grammar is not None and matcher_of else None

    def advance(self, logits: np.ndarray) -> int | None:
        """Pick the next token and send the text it settles: the token to feed the model next,
        or None when this answer has ended (its Finished sent)."""
        request = self.request
        raw = logits
        if self.matcher is not None:
            logits = self.matcher.mask(logits)
        token = self.sampler(logits)
        self.tokens.append(token)
        if token in self.eos_ids:
            return self._end("stop")
        if request.logprobs:
            self.pending.append(_logprobs(self.tokenizer, raw, token, request.top_logprobs))
        if self.matcher is not None:
            self.matcher.consume(token)
        if text := self.stops.push(self.decoder.push(token)):
            self.send(self.index, Delta(text, tuple(self.pending)))
            self.pending = []
        if self.stops.matched is not None or (self.matcher is not None and self.matcher.done()):
            return self._end("stop")
        if len(self.tokens) >= request.options.max_tokens:
            return self._end("length")
        if self.cancel.is_set():
            return self.cancelled()
        return token

    def _end(self, finish: str) -> None:
        if self.stops.matched is None:
            tail = self.stops.finish(self.decoder)
            if self.stops.matched is not None:
                finish = "stop"
            if tail:
                self.send(self.index, Delta(tail, tuple(self.pending)))
        return self._finish(Finished(finish, len(self.ids), len(self.tokens)))

    def cancelled(self) -> None:
        """End it because its client went away."""
        return self._finish(Finished("cancelled", len(self.ids), len(self.tokens)))

    def _finish(self, finished: Finished) -> None:
        if self.finished is None:
            self.finished = finished
            self.send(self.index, finished)


# -- loaded models and their scheduler -------------------------------------------------------


class _Group:
    """The rows of one adapter (None: the base model) decoded together, and the token each
    is fed at the next step."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.rows: dict[int, Row] = {}
        self.feed: dict[int, int] = {}


class ModelWorker:
    """One base model on its own thread, with its adapters unmerged on it, and the scheduler
    that decodes every request to it together (continuous batching).

    Between two steps the thread takes in new requests (each prompt is read alone, then its
    row joins its adapter's batch) and drops rows that ended or whose client left; each step
    is one forward pass over the rows of one adapter, the adapters taking turns. Loading, the
    adapters and every MLX array stay on this thread.
    """

    def __init__(self, inference: Inference, base: str) -> None:
        self.inference = inference
        self.base = base
        self.generator: Generator | None = None
        self.loading = asyncio.Lock()
        self.admitted = 0
        """Requests taken for this model and not finished (from the event loop's side)."""
        self.adapters: collections.OrderedDict[str, ServedModel] = collections.OrderedDict()
        """The adapters loaded on the base, least recently used first."""
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: collections.deque[tuple[Row, ServedModel]] = collections.deque()
        self._groups: dict[str | None, _Group] = {}
        self._keys = itertools.count()
        self._grammar_tokenizer: Any = None
        self.largest_batch = 0
        """The most rows decoded in one forward pass so far (tests and the log read it)."""
        self._thread = threading.Thread(
            target=self._loop, name=f"ft-infer-{base}"[:40], daemon=True
        )
        self._thread.start()

    # -- the event loop's side

    def between_steps(self, function: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `function` on the model's thread between two steps; its result, as a Future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.put(("call", function, future))
        return future

    def call(self, function: Callable[[], Any]) -> asyncio.Future[Any]:
        """`between_steps`, awaitable."""
        return asyncio.wrap_future(self.between_steps(function))

    def submit(self, rows: Sequence[tuple[Row, ServedModel]]) -> None:
        self._commands.put(("rows", rows, None))

    def close(self) -> None:
        self._commands.put(("close", None, None))

    # -- the model's thread

    def load(self) -> Generator:
        settings = self.inference.settings
        generator = Generator.load(
            self.base, backend=self.inference.backend, dtype=settings.inference_dtype,
            compile=settings.inference_compile,
        )  # fmt: skip
        warm = getattr(generator.lm, "warm", None)
        if settings.inference_compile and warm is not None:
            warm()  # builds in a builder process; steps are eager until it is done
        self.generator = generator
        return generator

    def use_adapter(self, served: ServedModel) -> None:
        """Load `served`'s adapter unless it is (least recently used ones make room), and
        mark it used."""
        assert self.generator is not None and served.adapter is not None
        loaded = self.generator.lm.adapters()
        if self.adapters.get(served.id, served) != served:  # the id names another run now
            self._unload(served.id)
        if served.id not in self.adapters:
            self._make_room(self.inference.max_adapters - 1)
            loaded.load(served.id, served.adapter)
            self.adapters[served.id] = served
        self.adapters.move_to_end(served.id)

    def _make_room(self, keep: int) -> None:
        # Unload least recently used adapters until `keep` are left; one still generating is
        # kept (the limit is then passed until it ends).
        for name in list(self.adapters):
            if len(self.adapters) <= keep:
                return
            group = self._groups.get(name)
            if group is None or not group.rows:
                self._unload(name)

    def _unload(self, name: str) -> None:
        assert self.generator is not None
        self.generator.lm.adapters().unload(name)
        del self.adapters[name]
        self._groups.pop(name, None)

    def matcher(self, grammar: str) -> GrammarMatcher:
        assert self.generator is not None
        if self._grammar_tokenizer is None:
            import llguidance.hf

            try:
                self._grammar_tokenizer = llguidance.hf.from_tokenizer(self.generator.tokenizer)
            except ValueError as error:
                raise GenerationError(f"response_format: {error}") from None
        return GrammarMatcher(self._grammar_tokenizer, grammar)

    def _busy(self) -> bool:
        return bool(self._waiting) or any(g.rows for g in self._groups.values())

    def _loop(self) -> None:
        while True:
            try:
                command = self._commands.get(block=not self._busy(), timeout=None)
            except queue.Empty:
                command = None
            while command is not None:
                kind, payload, future = command
                if kind == "close":
                    self._close()
                    return
                if kind == "call":
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(payload())
                        except BaseException as error:
                            future.set_exception(error)
                else:
                    self._waiting.extend(payload)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            self._admit()
            self._step()

    def _admit(self) -> None:
        active = sum(len(g.rows) for g in self._groups.values())
        while self._waiting and active < self.inference.max_batch:
            row, served = self._waiting[0]
            name = served.id if served.adapter is not None else None
            group = self._groups.get(name)
            if row.cancel.is_set():
                self._waiting.popleft()
                row.cancelled()
                continue
            if group is not None and group.rows and not group.batch.can_join():
                return  # a model whose cache cannot be batched: one at a time
            self._waiting.popleft()
            key = next(self._keys)
            try:
                assert self.generator is not None
                if served.adapter is not None:
                    self.use_adapter(served)
                self._activate(name)
                if group is None:
                    group = self._groups[name] = _Group(self.generator.lm.batch())
                row.start(self.generator, self.matcher)
                logits = group.batch.add(key, row.ids)
                token = row.advance(logits)
            except Exception as error:
                self._fail([row], error)
                if group is not None and key in group.batch.keys:
                    group.batch.remove(key)
                continue
            active += 1
            if token is None:
                group.batch.remove(key)
            else:
                group.rows[key] = row
                group.feed[key] = token

    def _step(self) -> None:
        for name, group in list(self._groups.items()):
            for key, row in list(group.rows.items()):
                if row.cancel.is_set():  # the client left: out before the next step
                    row.cancelled()
                    self._drop(group, key)
            if not group.rows:
                continue
            self.largest_batch = max(self.largest_batch, len(group.rows))
            try:
                self._activate(name)
                logits = group.batch.step(group.feed)
            except Exception as error:
                self._fail(list(group.rows.values()), error)
                self._groups.pop(name, None)
                continue
            group.feed = {}
            for key, row in list(group.rows.items()):
                try:
                    token = row.advance(logits[key])
                except Exception as error:
                    self._fail([row], error)
                    token = None
                if token is None:
                    self._drop(group, key)
                else:
                    group.feed[key] = token
        if len(self.adapters) > self.inference.max_adapters:
            self._make_room(self.inference.max_adapters)

    def _drop(self, group: _Group, key: int) -> None:
        group.batch.remove(key)
        del group.rows[key]
        group.feed.pop(key, None)

    def _activate(self, name: str | None) -> None:
        assert self.generator is not None
        if self.adapters or name is not None:
            adapters = self.generator.lm.adapters()
            if adapters.active != name:
                adapters.activate(name)

    def _fail(self, rows: Sequence[Row], error: Exception) -> None:
        for row in rows:
            row.cancel.set()  # the request's other rows leave too
            row.fail(error)

    def _close(self) -> None:
        for row, _ in self._waiting:
            row.cancel.set()
            row.cancelled()
        for group in self._groups.values():
            for row in group.rows.values():
                row.cancel.set()
                row.cancelled()
        self._waiting.clear()
        self._groups.clear()


class LoadedModel:
    """A served model (a base model, or an adapter on it) ready to take requests: its
    worker, and a Generator to encode prompts with (the adapter's run's chat template)."""

    def __init__(self, model: ServedModel, worker: ModelWorker, generator: Generator) -> None:
        self.model = model
        self.worker = worker
        self.generator: Generator | None = generator


class _Answer:
    """The events of one request's rows, handed from the model's thread to the event loop;
    ends after every row's Finished (or the first error)."""

    END = object()

    def __init__(self, inference: Inference, rows: int) -> None:
        self.inference = inference
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.left = rows
        self.failed = False

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    def send(self, index: int, event: Delta | Finished) -> None:
        if self.failed:
            return
        self._put((index, event))
        if isinstance(event, Finished):
            self.inference.last = event
            self.inference.ended.append(event)
            self.left -= 1
            if self.left == 0:
                self._put(self.END)

    def fail(self, error: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self._put(error)
            self._put(self.END)


class Inference:
    """The served models, loaded on first use; `app.state.inference`."""

    def __init__(self, settings: ServerSettings, *, backend: str = "auto") -> None:
        self.settings = settings
        self.backend = backend
        self.max_queue = settings.max_inference_queue
        self.max_batch = max(1, settings.max_batch_size)
        self.max_adapters = max(1, settings.max_loaded_adapters)
        self._workers: dict[str, ModelWorker] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._store: Any = None
        self.last: Finished | None = None
        """How the last generation ended (tests and the log read it)."""
        self.ended: collections.deque[Finished] = collections.deque(maxlen=64)
        """How the latest generations ended, oldest first."""

    def models(self) -> dict[str, ServedModel]:
        """The served models, read afresh (a run that just completed is there). Blocking: call
        it off the event loop."""
        if self._store is None and self.settings.paths.database.is_file():
            from ft_runs.store import JobStore

            self._store = JobStore(self.settings.paths.database)
        if self._store is None:
            return served_models(self.settings, NoRuns())
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
        """The model, loaded on its base model's thread on first use (an adapter onto its base,
        unmerged); ApiError when it cannot be."""
        served = await asyncio.to_thread(self.find, model_id)
        worker = self._workers.get(served.base)
        if worker is None:
            worker = self._workers[served.base] = ModelWorker(self, served.base)
        try:
            async with worker.loading:
                if worker.generator is None:
                    await worker.call(worker.load)
            if served.adapter is not None and worker.adapters.get(served.id) != served:
                await worker.call(functools.partial(worker.use_adapter, served))
        except (GenerationError, OSError, ValueError, ImportError) as error:
            raise ApiError(
                500, f"model `{model_id}` could not be loaded: {error}", code="model_load_failed"
            ) from None
        entry = self._loaded.get(model_id)
        if entry is None or entry.model != served or entry.worker is not worker:
            base = worker.generator
            assert base is not None
            template = PromptTemplate(served.id, served.template) if served.template else None
            view = Generator(
                base.lm,
                base.tokenizer,
                eos_ids=base.eos_ids,
                template=template or base.template,
                model_path=base.model_path,
                adapter=served.adapter,
                reason=base.reason,
                context_length=base.context_length,
            )
            entry = self._loaded[model_id] = LoadedModel(served, worker, view)
        return entry

    async def run(
        self, entry: LoadedModel, requests: Sequence[Request], cancel: threading.Event
    ) -> AsyncIterator[tuple[int, Delta | Finished]]:
        """The events of the request's choices (choice index, event) as the model's scheduler
        generates them, batched with every other request to the same base model. Admission is
        counted now: past the batch and the queue, ApiError 429."""
        worker = entry.worker
        if worker.admitted >= self.max_batch + self.max_queue:
            raise ApiError(
                429,
                f"{worker.admitted} requests are already generating or waiting for "
                f"`{entry.model.id}` (batches of {self.max_batch}, a queue of {self.max_queue}); "
                "retry shortly",
                code="queue_full",
                headers={"retry-after": "1"},
            )
        worker.admitted += 1
        answer = _Answer(self, len(requests))
        rows = [
            (Row(request, index, cancel, answer.send, answer.fail), entry.model)
            for index, request in enumerate(requests)
        ]
        try:
            worker.submit(rows)
            while True:
                item = await answer.events.get()
                if item is _Answer.END:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, GenerationError):
                        raise ApiError(400, str(item)) from None
                    raise item
                yield item
        finally:
            cancel.set()  # the client went away or the route failed: out within a step
            worker.admitted -= 1

    async def close(self) -> None:
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()
        self._loaded.clear()


def now() -> int:
    return int(time.time())


__all__ = [
    "Delta",
    "Finished",
    "Inference",
    "LoadedModel",
    "ModelWorker",
    "Request",
    "Row",
    "TokenLogprob",
]
