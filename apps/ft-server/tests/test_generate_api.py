"""POST /api/inference/generate: the REST API's plain answer, through the /v1 routes."""

from __future__ import annotations

KEY = "k-generate-0d1e"


def test_generate_answers_as_v1_does(make_client, tiny_llama):
    client = make_client(KEY, inference_allow=(str(tiny_llama),))
    model = str(tiny_llama)
    r = client.post(
        "/api/inference/generate", json={"model": model, "prompt": "Hello", "max_tokens": 3}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model"], out["finish_reason"], out["usage"]["completion_tokens"]) == (
        model,
        "length",
        3,
    )
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 3,
            "temperature": 0,
        },
    ).json()
    assert out["text"] == chat["choices"][0]["message"]["content"]
    raw = client.post(
        "/api/inference/generate",
        json={"model": model, "prompt": "Hello", "raw": True, "max_tokens": 2},
    ).json()
    assert raw["usage"]["completion_tokens"] == 2
    missing = client.post("/api/inference/generate", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    both = client.post(
        "/api/inference/generate",
        json={"model": model, "prompt": "x", "messages": [{"role": "user", "content": "x"}]},
    )
    assert both.status_code == 400
    client.headers.pop("Authorization")
    assert client.post("/api/inference/generate", json={"model": model}).status_code == 401
