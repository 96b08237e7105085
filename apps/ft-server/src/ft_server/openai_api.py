"""OpenAI-compatible inference: /v1/models, /v1/chat/completions, /v1/completions.

The official `openai` client works against it unchanged (base_url=http://127.0.0.1:8000/v1).
Models, loading and the generation loop are `ft_server.inference`'s; this module reads OpenAI's
request fields, checks them (400 in OpenAI's error shape for anything it cannot honour, never a
silent ignore) and writes OpenAI's responses and Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import attrs
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ft_models.generate import GenerationError, GenerationOptions
from ft_server.errors import ApiError, error_body
from ft_server.grammar import json_grammar
from ft_server.inference import (
    Delta,
    Finished,
    Inference,
    LoadedModel,
    TokenLogprob,
    now,
)
from ft_server.inference import Request as Generation

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger("ft_server.openai")

MAX_N = 8
"""The most choices (`n`) one request may ask for; they are generated one after the other."""


def setup(app: FastAPI) -> None:
    """Called by create_app: the inference state and its shutdown."""
    settings = app.state.settings
    app.state.inference = Inference(settings, backend=settings.inference_backend)

    async def close(app: FastAPI) -> None:
        await app.state.inference.close()

    app.state.on_stop.append(close)


def _inference(request: Request) -> Inference:
    return request.app.state.inference  # type: ignore[no-any-return]


# -- requests --------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Not OpenAI's, but what vLLM and llama.cpp's servers take too.
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0)


class ChatRequest(_Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


_UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "logit_bias": "logit_bias",
    "audio": "audio output",
    "prediction": "predicted outputs",
}


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        parsed = model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where or None) from None
    for field, what in _UNSUPPORTED.items():
        if body.get(field) not in (None, [], {}, "none", "auto"):
            raise ApiError(400, f"{field}: {what} is not supported by this server", param=field)
    return parsed


def _stops(value: str | list[str] | None) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop: at most 4 non-empty strings", param="stop")
    return stops


def _check_common(body: _Common) -> None:
    if body.n > MAX_N:
        raise ApiError(400, f"n: at most {MAX_N} choices per request", param="n")
    if body.frequency_penalty or body.presence_penalty:
        raise ApiError(
            400,
            "frequency_penalty and presence_penalty are not supported; use repetition_penalty "
            "(> 1 repeats less)",
            param="frequency_penalty" if body.frequency_penalty else "presence_penalty",
        )
    _stops(body.stop)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options: only with stream: true", param="stream_options")


def _budget(entry: LoadedModel, prompt_ids: list[int], max_tokens: int | None, param: str) -> int:
    """max_tokens checked against the model's context: 400 past it; None: the rest of it."""
    assert entry.generator is not None
    limit = entry.generator.context_length
    if limit is None:
        return max_tokens or 1024
    if len(prompt_ids) >= limit:
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your prompt is "
            f"{len(prompt_ids)} tokens. Please shorten it.",
            code="context_length_exceeded",
            param="messages" if param == "max_completion_tokens" else "prompt",
        )
    if max_tokens is not None and len(prompt_ids) + max_tokens > limit:
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
            f"{max_tokens} in the completion). Please reduce the prompt or {param}.",
            code="context_length_exceeded",
            param=param,
        )
    return max_tokens if max_tokens is not None else limit - len(prompt_ids)


def _generations(
    body: _Common, prompt_ids: list[int], max_tokens: int, **extra: Any
) -> list[Generation]:
    stops = _stops(body.stop)
    out = []
    for index in range(body.n):
        try:
            options = GenerationOptions(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                repetition_penalty=body.repetition_penalty,
                stop=stops,
                seed=None if body.seed is None else body.seed + index,
            )
        except GenerationError as error:
            raise ApiError(400, str(error)) from None
        out.append(Generation(tuple(prompt_ids), options, **extra))
    return out


def _message_text(message: dict[str, Any], index: int) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(
                    400,
                    f"messages.{index}.content: only text parts are supported",
                    param=f"messages.{index}.content",
                )
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    if content is None:
        content = ""
    if not isinstance(content, str) or not isinstance(message.get("role"), str):
        raise ApiError(
            400,
            f"messages.{index}: a message needs a role and text content",
            param=f"messages.{index}",
        )
    return {"role": message["role"], "content": content}


def _grammar(response_format: dict[str, Any] | None) -> str | None:
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json_grammar(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(
                400,
                "response_format.json_schema.schema: give the JSON schema as an object",
                param="response_format",
            )
        return json_grammar(schema)
    raise ApiError(
        400,
        f"response_format.type {kind!r}: choose text, json_object or json_schema",
        param="response_format",
    )


# -- routes ----------------------------------------------------------------------------------


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The models this server may load: base models and the adapters of completed runs (an
    adapter's `parent` is its base model)."""
    models = await asyncio.to_thread(_inference(request).models)
    return {
        "object": "list",
        "data": [
            {
                "id": m.id,
                "object": "model",
                "created": m.created,
                "owned_by": "ft",
                "parent": m.parent,
                "root": m.parent or m.id,
            }
            for m in models.values()
        ],
    }


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    m = await asyncio.to_thread(_inference(request).find, model_id)
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "ft",
        "parent": m.parent,
    }


@router.post(
    "/chat/completions",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}
        }
    },
)
async def chat_completions(request: Request) -> Any:
    """OpenAI's chat completions: messages through the model's chat template."""
    body: ChatRequest = await _parse(request, ChatRequest)
    _check_common(body)
    messages = [_message_text(m, i) for i, m in enumerate(body.messages)]
    grammar = _grammar(body.response_format)
    inference = _inference(request)
    entry = await inference.loaded(body.model)
    assert entry.generator is not None
    try:
        prompt_ids = entry.generator.encode(messages)
    except GenerationError as error:
        raise ApiError(400, str(error), param="messages") from None
    limit = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    generations = _generations(
        body,
        prompt_ids,
        _budget(entry, prompt_ids, limit, param),
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        grammar=grammar,
    )
    reply = _Reply("chat", body, entry, logprobs=body.logprobs)
    return await reply.respond(request, inference, entry, generations)


@router.post(
    "/completions",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": CompletionRequest.model_json_schema()}}
        }
    },
)
async def completions(request: Request) -> Any:
    """OpenAI's (legacy) text completions: the prompt as it is, no chat template."""
    body: CompletionRequest = await _parse(request, CompletionRequest)
    _check_common(body)
    if body.echo or body.suffix or (body.best_of or 1) > 1:
        raise ApiError(400, "echo, suffix and best_of are not supported", param="echo")
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise ApiError(400, "prompt: one prompt per request (use n for more choices)")
        prompt = prompt[0]
    inference = _inference(request)
    entry = await inference.loaded(body.model)
    assert entry.generator is not None
    try:
        prompt_ids = entry.generator.encode(prompt)
    except GenerationError as error:
        raise ApiError(400, str(error), param="prompt") from None
    generations = _generations(
        body,
        prompt_ids,
        _budget(entry, prompt_ids, body.max_tokens, "max_tokens"),
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )
    reply = _Reply("text", body, entry, logprobs=body.logprobs is not None)
    return await reply.respond(request, inference, entry, generations)


# -- responses -------------------------------------------------------------------------------


@attrs.define
class _Choice:
    text: str = ""
    tokens: list[TokenLogprob] = attrs.Factory(list)
    finish: Finished | None = None


class _Reply:
    """One request's answer, as a JSON body or as Server-Sent Events."""

    def __init__(
        self, kind: Literal["chat", "text"], body: _Common, entry: LoadedModel, *, logprobs: bool
    ) -> None:
        self.kind = kind
        self.body = body
        self.logprobs = logprobs
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = now()
        assert entry.generator is not None
        self.fingerprint = f"ft-{entry.generator.backend}"

    async def respond(
        self,
        request: Request,
        inference: Inference,
        entry: LoadedModel,
        generations: list[Generation],
    ) -> Any:
        cancel = threading.Event()
        events = inference.run(entry, generations, cancel)
        if self.body.stream:
            # Wait for the first event (the queue, the prompt) before answering, so that a 429
            # or an error is still a plain JSON answer; a client leaving meanwhile cancels.
            watcher = asyncio.create_task(_watch_disconnect(request, cancel))
            try:
                first = await _first(events)
            finally:
                watcher.cancel()
            return StreamingResponse(
                self._sse(first, events, cancel),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        try:
            choices = [_Choice() for _ in generations]
            async for index, event in events:
                if isinstance(event, Delta):
                    choices[index].text += event.text
                    choices[index].tokens.extend(event.tokens)
                else:
                    choices[index].finish = event
        finally:
            watcher.cancel()
        if cancel.is_set() and any(
            c.finish is None or c.finish.finish_reason == "cancelled" for c in choices
        ):
            return JSONResponse({}, status_code=499)  # nobody is listening
        return self._whole(choices)

    # the non-streamed body

    def _whole(self, choices: list[_Choice]) -> dict[str, Any]:
        out = []
        for index, choice in enumerate(choices):
            assert choice.finish is not None
            item: dict[str, Any] = {"index": index}
            if self.kind == "chat":
                item["message"] = {"role": "assistant", "content": choice.text}
            else:
                item["text"] = choice.text
            item["logprobs"] = self._logprobs(choice.tokens, 0) if self.logprobs else None
            item["finish_reason"] = choice.finish.finish_reason
            out.append(item)
        return {
            "id": self.id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": self.fingerprint,
            "choices": out,
            "usage": _usage([c.finish for c in choices]),
        }

    def _logprobs(self, tokens: list[TokenLogprob], offset: int) -> dict[str, Any]:
        if self.kind == "chat":
            return {
                "content": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": list(t.bytes),
                        "top_logprobs": [
                            {"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)}
                            for a in t.top
                        ],
                    }
                    for t in tokens
                ],
                "refusal": None,
            }
        offsets, position = [], offset
        for t in tokens:
            offsets.append(position)
            position += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in tokens],
            "text_offset": offsets,
        }

    # the stream

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> str:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    @property
    def _include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def _event_choice(
        self, index: int, text: str | None, tokens: tuple[TokenLogprob, ...], offset: int
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index}
        if self.kind == "chat":
            item["delta"] = {"content": text} if text is not None else {}
        else:
            item["text"] = text or ""
        item["logprobs"] = self._logprobs(list(tokens), offset) if self.logprobs else None
        item["finish_reason"] = None
        return item

    async def _sse(
        self,
        first: tuple[int, Delta | Finished] | None,
        events: AsyncIterator[tuple[int, Delta | Finished]],
        cancel: threading.Event,
    ) -> AsyncIterator[str]:
        finished: list[Finished] = []
        offsets = [0] * self.body.n
        try:
            if self.kind == "chat":
                for index in range(self.body.n):
                    start = {"index": index, "delta": {"role": "assistant", "content": ""}}
                    yield self._chunk([{**start, "logprobs": None, "finish_reason": None}])

            async def all_events() -> AsyncIterator[tuple[int, Delta | Finished]]:
                if first is not None:
                    yield first
                async for item in events:
                    yield item

            try:
                async for index, event in all_events():
                    if isinstance(event, Delta):
                        item = self._event_choice(index, event.text, event.tokens, offsets[index])
                        offsets[index] += len(event.text)
                        yield self._chunk([item])
                    else:
                        finished.append(event)
                        item = self._event_choice(index, None, (), offsets[index])
                        item["finish_reason"] = event.finish_reason
                        yield self._chunk([item])
            except ApiError as error:  # the answer has begun: the error goes in the stream
                body = error_body(error.status, error.message, code=error.code, param=error.param)
                yield f"data: {json.dumps(body)}\n\n"
                return
            except Exception as error:
                log.exception("generation failed in a stream")
                body = error_body(
                    500, f"internal error: {type(error).__name__}", code="internal_error"
                )
                yield f"data: {json.dumps(body)}\n\n"
                return
            if self._include_usage:
                yield self._chunk([], _usage(finished))
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()
            await events.aclose()  # type: ignore[attr-defined]


async def _first(
    events: AsyncIterator[tuple[int, Delta | Finished]],
) -> tuple[int, Delta | Finished] | None:
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


def _usage(finished: list[Finished | None]) -> dict[str, int]:
    done = [f for f in finished if f is not None]
    prompt = done[0].prompt_tokens if done else 0
    completion = sum(f.completion_tokens for f in done)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client of a non-streamed request goes away."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.05)
