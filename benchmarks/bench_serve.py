"""Benchmark: serving SmolLM2-135M-Instruct to 1 and 8 concurrent streaming clients.

Three servers of the same weights (the embedded model, imported once into a safetensors folder),
each started alone on 127.0.0.1, warmed up with one request, then asked the same chat prompts
with the same `max_tokens` at temperature 0 over OpenAI's streaming chat API:

- ft-server (torch backend: continuous batching, one forward pass per step over every request),
- `mlx_lm.server` (mlx-lm's own server, with its BatchGenerator; same machine, the mlx[cpu]
  wheel's BLAS unless `--mlx-preload LIB` preloads another, e.g. MKL's libmkl_rt),
- what a user writes instead: FastAPI + transformers `generate` with a `TextIteratorStreamer`
  and a thread per request (written below, as the transformers docs show it).

Scenario "1 client": one client sends the prompts one after the other. Scenario "8 clients":
eight clients send at once, each its share of the prompts. Each prompt is sent once per
scenario (distinct prompts, so no server's prompt cache helps). Reports aggregate completion
tokens/s (tokens counted by re-tokenizing each answer with the model's tokenizer, the same rule
for every server; wall time of the whole scenario) and time to first token (the first non-empty
content chunk) p50/p99, then the ratios ft-server / each baseline.

    OMP_WAIT_POLICY=PASSIVE uv run python benchmarks/bench_serve.py [--max-tokens 24] \
        [--prompts 8] [--only ft,mlx,hf]

ft-server sets OMP_WAIT_POLICY=PASSIVE itself unless it is set (spinning OpenMP threads starve
each other on a CPU shared with other work); export it, as above, so the baselines run with it
too. The servers inherit this process's environment; the header prints the value used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_features

TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "how bread rises, for a ten-year-old",
    "the water cycle, step by step",
    "a robot learning to paint",
    "why the sky is blue",
    "a day in the life of a honeybee",
    "how to plant tomatoes on a balcony",
    "a detective story set on a train",
    "the history of the bicycle",
    "a dragon who is afraid of the dark",
    "how a compass works",
    "a letter from a sailor to his sister",
    "what volcanoes are made of",
    "a recipe for pancakes, explained",
    "the rules of chess for a beginner",
    "a fox and a crow who become friends",
]

BASELINE_APP = '''
"""What a user writes to serve a model: FastAPI + transformers generate, streamed."""
import json
import sys
import threading

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

PORT, MODEL, DTYPE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=getattr(torch, DTYPE)).eval()
app = FastAPI()


@app.get("/v1/models")
def models():
    return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    inputs = tokenizer.apply_chat_template(
        body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    temperature = body.get("temperature", 1.0)
    kwargs = dict(
        **inputs,
        streamer=streamer,
        max_new_tokens=body.get("max_tokens", 256),
        do_sample=temperature > 0,
        **({"temperature": temperature} if temperature > 0 else {}),
    )
    threading.Thread(target=model.generate, kwargs=kwargs).start()

    def events():
        for text in streamer:
            if text:
                chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
                yield f"data: {json.dumps(chunk)}\\n\\n"
        yield "data: [DONE]\\n\\n"

    return StreamingResponse(events(), media_type="text/event-stream")


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def model_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (imported from its GGUF once,
    then reused: ft_models.resolve)."""
    from ft_models.resolve import resolve_model

    return Path(resolve_model("smollm2-135m").path)


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], model: str) -> None:
        self.name, self.argv, self.env, self.model = name, argv, env, model
        self.port = free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile(prefix=f"bench-serve-{name}-")  # noqa: SIM115

    def start(self, timeout: float = 300) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-3000:]
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not answer within {timeout:.0f} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def one_request(
    http: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int
) -> tuple[float, str]:
    """Time to first token (s) and the answer's text, streamed."""
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    async with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            raise SystemExit(f"{server.name}: {reply.status_code} {await reply.aread()!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    parts.append(text)
    return (first if first is not None else time.perf_counter() - started), "".join(parts)


async def scenario(
    server: Server, prompts: list[str], clients: int, max_tokens: int
) -> tuple[float, list[float], list[str]]:
    """Wall seconds, times to first token, answers: `clients` clients share the prompts."""
    shares = [prompts[i::clients] for i in range(clients)]
    ttfts: list[float] = []
    answers: list[str] = []

    async def client(share: list[str]) -> None:
        async with httpx.AsyncClient(timeout=600) as http:
            for prompt in share:
                ttft, text = await one_request(http, server, prompt, max_tokens)
                ttfts.append(ttft)
                answers.append(text)

    started = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares))
    return time.perf_counter() - started, ttfts, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per scenario")
    parser.add_argument("--clients", default="1,8", help="the client counts to run")
    parser.add_argument("--only", default="ft,mlx,hf", help="servers: ft, mlx, hf")
    parser.add_argument("--mlx-preload", default="", help="LD_PRELOAD for mlx_lm.server")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="what ft-server and the FastAPI server compute in (auto: what ft picks on this CPU)",
    )
    args = parser.parse_args()

    import torch
    import transformers

    folder = model_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    print(f"cpu: {cpu_features()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} for every server")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"model: {folder}")
    prompts = [f"Tell me about {topic}." for topic in TOPICS[: args.prompts]]
    counts = [int(c) for c in args.clients.split(",")]
    print(f"{len(prompts)} prompts per scenario, max_tokens {args.max_tokens}, temperature 0")

    dtype = args.dtype
    if dtype == "auto":  # what ft-server picks on this CPU, given to the baseline too
        from ft_models.generation.torch_backend import cpu_decode_dtype

        dtype = cpu_decode_dtype()
    print(f"dtype: {dtype} for ft-server and FastAPI+transformers (mlx_lm.server: as saved)")
    home = tempfile.mkdtemp(prefix="bench-serve-home-")
    app_file = Path(home) / "hf_server.py"
    app_file.write_text(BASELINE_APP, encoding="utf-8")
    servers = {
        "ft": Server(
            "ft-server",
            [
                sys.executable,
                "-c",
                "from ft_server.main import main; main()",
                "--port",
                "{port}",
                "--allow-model",
                str(folder),
                "--backend",
                "torch",
                "--dtype",
                dtype,
                "--log-level",
                "warning",
            ],
            {"FT_HOME": home},
            str(folder),
        ),
        "mlx": Server(
            "mlx_lm.server",
            [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--port", "{port}"],
            {"LD_PRELOAD": args.mlx_preload} if args.mlx_preload else {},
            str(folder),
        ),
        "hf": Server(
            "FastAPI+transformers",
            [sys.executable, str(app_file), "{port}", str(folder), dtype],
            {},
            str(folder),
        ),
    }
    chosen = [servers[key] for key in args.only.split(",")]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for server in chosen:
        server.start()
        try:
            asyncio.run(scenario(server, ["Say hello."], 1, 4))  # warm-up
            for clients in counts:
                wall, ttfts, answers = asyncio.run(
                    scenario(server, prompts, clients, args.max_tokens)
                )
                tokens = sum(len(tokenizer.encode(a, add_special_tokens=False)) for a in answers)
                results[(server.name, clients)] = {
                    "tokens_per_s": tokens / wall,
                    "tokens": tokens,
                    "wall_s": wall,
                    "ttft_p50": percentile(ttfts, 50),
                    "ttft_p99": percentile(ttfts, 99),
                }
                row = results[(server.name, clients)]
                print(
                    f"  {server.name} {clients} client(s): {row['tokens_per_s']:.1f} tok/s "
                    f"({tokens} tokens in {wall:.1f} s)",
                    flush=True,
                )
        finally:
            server.stop()

    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print(f"{'server':<22}{'clients':>8}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}")
    for (name, clients), row in results.items():
        print(
            f"{name:<22}{clients:>8}{row['tokens_per_s']:>10.1f}"
            f"{row['ttft_p50'] * 1000:>8.0f}ms{row['ttft_p99'] * 1000:>8.0f}ms"
        )
    ft = servers["ft"].name
    for clients in counts:
        mine = results.get((ft, clients))
        if mine is None:
            continue
        for server in chosen:
            other = results.get((server.name, clients))
            if server.name == ft or other is None:
                continue
            print(
                f"ratio ft-server / {server.name}, {clients} client(s): tokens/s "
                f"{mine['tokens_per_s'] / other['tokens_per_s']:.2f}x, TTFT p50 "
                f"{other['ttft_p50'] / mine['ttft_p50']:.2f}x faster"
            )
    print(
        "(tokens/s above 1x: ft-server serves more; TTFT above 1x: ft-server answers first sooner)"
    )
    Path(home, "results.json").write_text(
        json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1), encoding="utf-8"
    )
    print(f"results: {home}/results.json")


if __name__ == "__main__":
    main()
