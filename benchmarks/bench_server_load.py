"""Benchmark: a bounded loopback load test of ft-server while a training job runs.

Starts `ft-server` on 127.0.0.1 (a fresh FT_HOME), queues a training job on a tiny random Llama
(torch backend), and once it trains sends a fixed number of requests from several concurrent
clients: `/health`, `/api/jobs`, `/api/training/{id}/status`, `/api/metrics/{id}`. Reports the
status codes (the goal: no 5xx), the latency p50/p99 of `/health` and of the API routes, and
whether the job was still training through the whole load. Prints one JSON object.

    uv run python benchmarks/bench_server_load.py [--clients 8] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def load(url: str, job_id: str, clients: int, requests: int) -> dict:
    paths = ["/health", "/api/jobs", f"/api/training/{job_id}/status", f"/api/metrics/{job_id}"]
    latencies: dict[str, list[float]] = {"health": [], "api": []}
    codes: dict[int, int] = {}
    counter = iter(range(requests))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for i in counter:
                path = paths[i % len(paths)]
                start = time.perf_counter()
                r = await http.get(path)
                elapsed = (time.perf_counter() - start) * 1000
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                latencies["health" if path == "/health" else "api"].append(elapsed)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "clients": clients,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "5xx": sum(v for k, v in codes.items() if k >= 500),
        "health_ms": {
            "p50": round(statistics.median(latencies["health"]), 2),
            "p99": round(percentile(latencies["health"], 99), 2),
            "max": round(max(latencies["health"]), 2),
        },
        "api_ms": {
            "p50": round(statistics.median(latencies["api"]), 2),
            "p99": round(percentile(latencies["api"], 99), 2),
            "max": round(max(latencies["api"]), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    from ft_testing.tiny_models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model("llama", work / "llama")
        data = work / "data.jsonl"
        rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}."} for i in range(64)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FT_HOME": str(work / "home")}
        server = subprocess.Popen(
            [sys.executable, "-m", "ft_server.main", "--port", str(port), "--log-level",
             "warning", "--allow-root", str(work)],
            env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            body = {
                "config": {
                    "model": {"name": str(model)},
                    "data": {"train": str(data), "max_seq_length": 64, "validation_split": 0},
                    "training": {"backend": "torch", "max_steps": 100000, "batch_size": 2,
                                 "save_every": 100000},
                }
            }  # fmt: skip
            job = httpx.post(f"{url}/api/training/start", json=body, timeout=60).json()
            while True:  # until it trains
                status = httpx.get(f"{url}/api/training/{job['id']}/status").json()
                if status["run"] and status["run"]["step"] >= 1:
                    break
                if status["status"] not in ("queued", "running"):
                    raise SystemExit(f"the job ended before the load: {status}")
                time.sleep(0.2)
            result = asyncio.run(load(url, job["id"], args.clients, args.requests))
            after = httpx.get(f"{url}/api/training/{job['id']}/status").json()
            result["job_status_after"] = after["status"]
            result["training_steps_during_load"] = after["run"]["step"] - status["run"]["step"]
            httpx.post(f"{url}/api/jobs/{job['id']}/cancel")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
