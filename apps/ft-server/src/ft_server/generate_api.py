"""`POST /api/inference/generate`: one answer from a served model, in the REST API's plain shape.

A thin layer over the OpenAI-compatible routes (`ft_server.openai_api`): the request is passed
on, inside the process, to `/v1/chat/completions` (with `messages`, or a `prompt` sent as one
user message) or to `/v1/completions` (a `prompt` with `raw: true`, no chat template), with the
caller's own credentials, so what may be loaded, limits and errors are exactly those of `/v1`.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ft_server.errors import ApiError

router = APIRouter(tags=["inference"])


class Generate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="a served model id (GET /v1/models lists them)")
    prompt: str | None = Field(None, description="one user message (or raw text with `raw`)")
    messages: list[dict[str, Any]] | None = Field(None, description="a conversation instead")
    raw: bool = Field(False, description="send `prompt` as it is, without the chat template")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, description="0 (the default here): greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None


@router.post("/api/inference/generate")
async def generate(body: Generate, request: Request) -> Any:
    """One answer: `{"model", "text", "finish_reason", "usage"}`."""
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give either prompt or messages", code="invalid_request")
    if body.raw and body.prompt is None:
        raise ApiError(400, "raw needs a prompt (not messages)", param="raw")
    if "/v1/completions" not in request.app.openapi()["paths"]:
        raise ApiError(501, "this server has no inference routes", code="not_implemented")
    options = body.model_dump(
        include={"model", "max_tokens", "temperature", "top_p", "seed", "stop"}, exclude_none=True
    )
    if body.raw:
        path, payload = "/v1/completions", {**options, "prompt": body.prompt}
    else:
        messages = body.messages or [{"role": "user", "content": body.prompt}]
        path, payload = "/v1/chat/completions", {**options, "messages": messages}
    headers = {
        k: v for k, v in request.headers.items() if k.lower() in ("authorization", "x-api-key")
    }
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", timeout=None
    ) as inner:
        answer = await inner.post(path, json=payload, headers=headers)
    data = answer.json()
    if answer.status_code != 200:
        return JSONResponse(data, status_code=answer.status_code)
    choice = data["choices"][0]
    text = choice["text"] if body.raw else choice["message"]["content"]
    return {
        "model": data["model"],
        "text": text,
        "finish_reason": choice["finish_reason"],
        "usage": data.get("usage"),
    }
