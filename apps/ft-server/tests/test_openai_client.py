"""The OpenAI-compatible routes, driven by the official `openai` client against a live uvicorn
on 127.0.0.1, serving a tiny random Llama and the LoRA adapter of a completed run."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from ft_config.paths import app_paths
from ft_runs.store import JobStore
from ft_server import ServerSettings, create_app
from ft_testing.asgi_server import ThreadedServer

RUN_ID = "run-tiny-lora"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def make_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """A PEFT LoRA adapter for the tiny Llama with random, non-zero A and B matrices."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(folder, safe_serialization=True)
    return folder


def completed_run(home: Path, base: Path, run_id: str = RUN_ID, seed: int = 1) -> None:
    """A completed run of `base` in the store of the app folder `home`, with its adapter."""
    run_dir = home / "runs" / run_id
    make_adapter(base, run_dir / "adapter", seed)
    (run_dir / "run.json").write_text(
        json.dumps({"id": run_id, "model": {"name": str(base), "path": str(base)}}),
        encoding="utf-8",
    )
    store = JobStore(app_paths({"FT_HOME": str(home)}).database)
    store.create_run(run_id, run_dir=run_dir, config={}, model=str(base), method="lora")
    store.finish_run(run_id, "completed")
    store.close()


class LiveServer(ThreadedServer):
    """ft-server on a real socket, with an OpenAI client for it."""

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__(create_app(settings), join_timeout=30)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


def wait_for_end(inference: Any) -> Any:
    """How the server's last generation ended, once it has (polled; at most a minute)."""
    for _ in range(1200):
        if inference.last is not None:
            return inference.last
        time.sleep(0.05)
    raise AssertionError("the generation did not end")


def serve(tmp: Path, base: Path, **settings: Any) -> LiveServer:
    # float32: these tests compare a request decoded in a batch with the same request alone, to
    # 1e-4 in the logprobs; in bfloat16 (what a CPU with native bf16 gets by default) the two
    # differ by rounding (a batch's matrix product sums in another order than one row's).
    paths = app_paths({"FT_HOME": str(tmp)})
    settings = {"inference_dtype": "float32", **settings}
    return LiveServer(ServerSettings(paths=paths, inference_allow=(str(base),), **settings))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    home = tmp_path_factory.mktemp("home")
    completed_run(home, tiny_llama)
    return home


@pytest.fixture(scope="module")
def live(home: Path, tiny_llama: Path) -> Iterator[LiveServer]:
    server = serve(home, tiny_llama)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return live.client()


@pytest.fixture(scope="module")
def base(tiny_llama: Path) -> str:
    return str(tiny_llama)


def test_models_lists_the_base_and_the_adapter_of_the_completed_run(client, base) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {base, RUN_ID}
    assert models[RUN_ID].model_extra["parent"] == base
    assert models[base].model_extra["parent"] is None
    assert client.models.retrieve(RUN_ID).id == RUN_ID


def test_an_unknown_model_is_a_404_in_openais_shape(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "GET /v1/models lists them" in caught.value.message


def test_max_tokens_ends_with_length_and_usage_adds_up(client, base) -> None:
    reply = client.chat.completions.create(model=base, messages=CHAT, max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    assert reply.usage.prompt_tokens > 5


def test_the_joined_stream_equals_the_whole_answer_and_usage_comes_last(client, base) -> None:
    whole = client.chat.completions.create(model=base, messages=CHAT, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=base,
            messages=CHAT,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content != ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stop_string_split_across_tokens_never_leaks(client, base) -> None:
    # The tokens of the greedy answer, to pick a stop string that straddles two of them.
    whole = client.chat.completions.create(
        model=base, messages=CHAT, max_tokens=40, temperature=0, logprobs=True
    )
    tokens = [t.token for t in whole.choices[0].logprobs.content]
    text = whole.choices[0].message.content
    assert "".join(tokens) == text
    position, stop = 0, None
    for left, right in itertools.pairwise(tokens):
        position += len(left)
        candidate = left[-2:] + right[:2]
        if len(left) >= 2 and len(right) >= 2 and text.find(candidate) == position - 2:
            stop = candidate
            break
    assert stop is not None, tokens
    chunks = list(
        client.chat.completions.create(
            model=base, messages=CHAT, max_tokens=40, temperature=0, stop=[stop], stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text[: position - 2]
    assert chunks[-1].choices[0].finish_reason == "stop"
    plain = client.chat.completions.create(
        model=base, messages=CHAT, max_tokens=40, temperature=0, stop=stop
    )
    assert plain.choices[0].message.content == text[: position - 2]
    assert plain.choices[0].finish_reason == "stop"


def test_top_logprobs_rank_the_alternatives_of_each_token(client, base) -> None:
    reply = client.chat.completions.create(
        model=base, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == entry.logprob <= 0
    joined = b"".join(bytes(entry.bytes) for entry in content)
    assert joined.decode("utf-8", errors="replace") == reply.choices[0].message.content


def test_a_seed_repeats_under_concurrent_load(client, base) -> None:
    def ask(seed: int) -> str:
        reply = client.chat.completions.create(
            model=base, messages=CHAT, max_tokens=12, temperature=1.0, seed=seed
        )
        return reply.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [7, 7, 8, 7]))
    assert answers[0] == answers[1] == answers[3] != answers[2]


def test_concurrent_requests_are_decoded_together_and_each_gets_its_answer_alone(
    live, client, base
) -> None:
    def ask(kw: dict[str, Any]) -> tuple[str, str, list[float]]:
        if kw.get("stream"):
            chunks = list(client.chat.completions.create(model=base, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            return text, chunks[-1].choices[0].finish_reason, []
        choice = client.chat.completions.create(model=base, **kw).choices[0]
        logprobs = [t.logprob for t in choice.logprobs.content] if choice.logprobs else []
        return choice.message.content, choice.finish_reason, logprobs

    def leave_early() -> None:
        body = {"model": base, "messages": CHAT, "max_tokens": 400, "temperature": 1.0, "seed": 2}
        with (
            httpx.Client(base_url=live.url, timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # generating now
            # Leave only once a step has decoded it with the others: leaving sooner (a loaded
            # machine prefilling the other rows slowly) would drop it before that step.
            deadline = time.monotonic() + 60
            while worker.largest_batch < len(asks) + 1 and time.monotonic() < deadline:
                time.sleep(0.01)

    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    # Mixed prompt lengths, greedy and sampled, plain and streamed, with and without logprobs.
    asks: list[dict[str, Any]] = [
        {"messages": user("Hi"), "max_tokens": 8, "temperature": 0, "logprobs": True},
        {"messages": user("Name the capital of France, in one word, please."), "max_tokens": 20},
        {"messages": user("A story: " + "once upon a time " * 12), "max_tokens": 14, "stop": "e"},
        {"messages": CHAT, "max_tokens": 12, "temperature": 1.0, "seed": 5},
        {"messages": user("Count with me: one, two,"), "max_tokens": 16, "stream": True},
    ]
    for kw in asks:
        kw.setdefault("temperature", 0)
    alone = [ask(kw) for kw in asks]
    inference = live.app.state.inference
    worker = inference._workers[base]
    worker.largest_batch = 0
    gate = threading.Event()
    worker.between_steps(gate.wait)  # hold the model until every request is in, so they meet
    with ThreadPoolExecutor(len(asks) + 1) as pool:
        futures = [pool.submit(ask, kw) for kw in asks]
        leaving = pool.submit(leave_early)
        for _ in range(600):
            if worker.admitted == len(asks) + 1:
                break
            time.sleep(0.05)
        gate.set()
        together = [f.result() for f in futures]
        leaving.result()
    assert worker.largest_batch == len(asks) + 1
    for (text, finish, logprobs), (text_alone, finish_alone, logprobs_alone) in zip(
        together, alone, strict=True
    ):
        assert (text, finish) == (text_alone, finish_alone)
        assert logprobs == pytest.approx(logprobs_alone, abs=1e-4)
    assert alone[2][1] == "stop" and "e" not in alone[2][0]
    # the stream closed after its first chunk left the batch long before its 400 tokens
    ended = [f for f in list(inference.ended) if f.finish_reason == "cancelled"]
    assert ended and ended[-1].completion_tokens < 400


def test_n_gives_several_choices(client, base) -> None:
    reply = client.chat.completions.create(
        model=base, messages=CHAT, max_tokens=8, temperature=1.0, seed=3, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert reply.usage.completion_tokens == 16
    with pytest.raises(openai.BadRequestError, match="n: at most 8"):
        client.chat.completions.create(model=base, messages=CHAT, n=9)


def test_json_schema_output_parses_and_validates(client, base) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    for seed in (1, 2):
        reply = client.chat.completions.create(
            model=base,
            messages=CHAT,
            max_tokens=60,
            temperature=1.0,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": schema},
            },
        )
        value = json.loads(reply.choices[0].message.content)
        assert set(value) == {"city", "sunny"}
        assert value["city"] in ("Paris", "Rome") and isinstance(value["sunny"], bool)
        assert reply.choices[0].finish_reason == "stop"
    reply = client.chat.completions.create(
        model=base, messages=CHAT, max_tokens=60, response_format={"type": "json_object"}, seed=1
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.startswith("{")


def test_parallel_requests_to_different_adapters_get_their_own_answers(client, base) -> None:
    def ask(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=16, temperature=0
        )
        return reply.choices[0].message.content

    alone = {model: ask(model) for model in (base, RUN_ID)}
    assert alone[base] != alone[RUN_ID]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, [base, RUN_ID, base, RUN_ID]))
    assert together == [alone[base], alone[RUN_ID]] * 2


def test_prompts_and_max_tokens_past_the_context_are_400s(client, base) -> None:
    long = [{"role": "user", "content": "The quick brown fox " * 200}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=base, messages=long)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=base, messages=CHAT, max_tokens=600)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_tokens"


def test_text_completions_with_logprobs(client, base) -> None:
    reply = client.completions.create(
        model=base, prompt="The capital of France", max_tokens=5, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 5
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    streamed = client.completions.create(
        model=base, prompt="The capital of France", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_a_full_queue_is_a_429_and_a_client_that_leaves_stops_its_generation(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_server.inference import ModelWorker

    server = serve(tmp_path, tiny_llama, max_inference_queue=0, max_batch_size=1)
    try:
        body = {
            "model": str(tiny_llama),
            "messages": CHAT,
            "max_tokens": 400,
            "temperature": 1.0,
            "stream": True,
        }
        # A seed whose answer runs all 400 tokens: sampled, the random model's end-of-text
        # token comes before the 400th about half the time, and the answer would end.
        for seed in range(20):
            whole = server.client().chat.completions.create(
                **{**body, "stream": False, "seed": seed}
            )
            if whole.choices[0].finish_reason == "length":
                body["seed"] = seed
                break
        else:
            raise AssertionError("none of 20 seeds gave an answer of 400 tokens")
        # Then each decoding step takes 20 ms more: the answer lasts seconds, not the fraction
        # of one the tiny model needs (on a loaded machine the second request came after the
        # first answer had ended).
        step = ModelWorker._step

        def slow_step(self: ModelWorker) -> None:
            time.sleep(0.02)
            step(self)

        monkeypatch.setattr(ModelWorker, "_step", slow_step)
        inference = server.app.state.inference
        inference.last = None  # how the probes ended is not what is asserted below
        with (
            httpx.Client(base_url=server.url, timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # generating now
            with pytest.raises(openai.RateLimitError) as caught:
                server.client().chat.completions.create(model=str(tiny_llama), messages=CHAT)
            assert caught.value.code == "queue_full"
            # the stream is closed: the server stops within a step, long before 400 tokens
        ended = wait_for_end(inference)
        assert ended.finish_reason == "cancelled" and ended.completion_tokens < 400

        # A plain (not streamed) request whose client hangs up at once is cancelled too.
        inference.last = None
        payload = json.dumps({**body, "stream": False}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
        ended = wait_for_end(inference)
        assert ended.finish_reason == "cancelled" and ended.completion_tokens < 400
    finally:
        server.stop()


def test_mlx_serves_the_same_answers_as_torch(tmp_path: Path, tiny_llama: Path, client) -> None:
    server = serve(tmp_path, tiny_llama, inference_backend="mlx")
    try:
        mlx = server.client()
        asked = {"model": str(tiny_llama), "messages": CHAT, "max_tokens": 12, "temperature": 0}
        reply = mlx.chat.completions.create(**asked)
        assert reply.system_fingerprint == "ft-mlx"
        assert reply.choices[0].message.content == (
            client.chat.completions.create(**asked).choices[0].message.content
        )
        streamed = mlx.chat.completions.create(**asked, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in streamed)
        assert text == reply.choices[0].message.content
        # batched on MLX too: concurrent prompts of other lengths get their answers alone
        prompts = ["Hi", "Name three colours of the rainbow, please, in order."]
        mine = [{**asked, "messages": [{"role": "user", "content": p}]} for p in prompts]
        alone = [mlx.chat.completions.create(**kw).choices[0].message.content for kw in mine]
        worker = server.app.state.inference._workers[str(tiny_llama)]
        gate = threading.Event()
        worker.between_steps(gate.wait)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(mlx.chat.completions.create, **kw) for kw in [asked, *mine]]
            for _ in range(600):
                if worker.admitted == 3:
                    break
                time.sleep(0.05)
            gate.set()
            together = [f.result().choices[0].message.content for f in futures]
        assert together == [reply.choices[0].message.content, *alone]
        assert worker.largest_batch == 3
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        reply = mlx.chat.completions.create(
            **{**asked, "max_tokens": 40, "temperature": 1.0},
            seed=1,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        )
        assert reply.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(reply.choices[0].message.content)["ok"], bool)
    finally:
        server.stop()


def test_adapters_share_the_base_and_the_least_recently_used_is_unloaded(
    tmp_path: Path, tiny_llama: Path
) -> None:
    runs = ("run-a", "run-b", "run-c")
    for seed, run in enumerate(runs, start=2):
        completed_run(tmp_path, tiny_llama, run, seed=seed)
    server = serve(tmp_path, tiny_llama, max_loaded_adapters=2)
    try:
        client = server.client()

        def ask(model: str) -> str:
            reply = client.chat.completions.create(
                model=model, messages=CHAT, max_tokens=10, temperature=0
            )
            return reply.choices[0].message.content

        alone = {model: ask(model) for model in (str(tiny_llama), *runs)}
        assert len(set(alone.values())) == 4  # each adapter answers its own way
        worker = server.app.state.inference._workers[str(tiny_llama)]
        assert list(worker.adapters) == ["run-b", "run-c"]  # run-a, least recently used, went
        assert ask("run-a") == alone["run-a"]  # loaded again on use
        assert list(worker.adapters) == ["run-c", "run-a"]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(ask, [*runs, str(tiny_llama)] * 2))
        assert together == [alone[m] for m in (*runs, str(tiny_llama))] * 2
        for _ in range(200):  # past the limit while all three generated; back to it after
            if len(worker.adapters) <= 2:
                break
            time.sleep(0.05)
        assert len(worker.adapters) == 2
        assert len(server.app.state.inference._workers) == 1  # one copy of the base model
    finally:
        server.stop()


def test_logprob_bytes_are_each_tokens_own_bytes(tiny_llama: Path) -> None:
    import transformers

    from ft_server.inference import _token

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    text = "Bonjour, ça va? 東京 🌱"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [_token(tokenizer, i, 0.0) for i in ids]
    assert any("\ufffd" in p.token for p in pieces)  # some tokens are parts of a character
    assert b"".join(bytes(p.bytes) for p in pieces) == text.encode("utf-8")


def test_a_server_that_compiles_the_decode_step_answers_as_the_eager_one(
    tmp_path: Path, tiny_llama: Path, client, base
) -> None:
    from ft_models.generation.compiled_decode import compile_unavailable

    if compile_unavailable() is not None:
        pytest.skip(f"torch.compile cannot build CPU code here: {compile_unavailable()}")
    server = serve(tmp_path, tiny_llama, inference_compile=True)
    try:
        ask = {"model": base, "messages": CHAT, "max_tokens": 12, "temperature": 0,
               "logprobs": True}  # fmt: skip
        # The first request may come while the step compiles (it is then decoded eagerly).
        first = server.client().chat.completions.create(**ask)
        worker = server.app.state.inference._workers[base]
        compiled = worker.generator.lm.static().compiled
        assert compiled is not None, worker.generator.lm.compile_reason
        for _ in range(1200):
            if not compiled.busy:
                break
            time.sleep(0.05)
        assert compiled.compiled  # compiled at load, in the background
        second = server.client().chat.completions.create(**ask)
        eager = client.chat.completions.create(**ask)  # the module's server: not compiled
        for reply in (first, second):
            assert reply.choices[0].message.content == eager.choices[0].message.content
            got = [t.logprob for t in reply.choices[0].logprobs.content]
            want = [t.logprob for t in eager.choices[0].logprobs.content]
            np.testing.assert_allclose(got, want, atol=1e-4)
    finally:
        server.stop()
