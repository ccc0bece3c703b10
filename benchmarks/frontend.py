"""Front-end benchmarks: per-request overhead over a bare forward, and dynamic batching.

    python benchmarks/frontend.py [--requests 2000] [--seconds 3] [--concurrency 32]

Servers run in subprocesses (so the client does not share their GIL); the client sends
sequential requests over one keep-alive connection and prints p50/p99 latency for:
  - a bare forward of the tiny model (in this process, no server),
  - a raw aiohttp handler that returns fixed bytes (the floor of any aiohttp server),
  - statmux REST with the binary tensor extension and with plain JSON, and statmux gRPC.
Then throughput of a larger MLP under `--concurrency` concurrent clients, with dynamic
batching (max_batch_size 8) and without (max_batch_size 1). Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- servers
def serve_statmux(http_port: int, grpc_port: int, max_batch: int, big: bool) -> None:
    import torch

    from statmux.runtime.frontend import FrontEnd
    from statmux.runtime.local_engine import LocalEngine, tiny_mlp
    from statmux.runtime.server_runner import serve

    torch.set_num_threads(1)
    model = (
        tiny_mlp(features=256, hidden=2048, classes=16, max_batch_size=max_batch)
        if big
        else tiny_mlp(max_batch_size=max_batch)
    )
    engine = LocalEngine([model])
    front = FrontEnd(engine)
    asyncio.run(serve(front, "127.0.0.1", http_port, grpc_port, asyncio.Event()))


def serve_raw(http_port: int) -> None:
    from aiohttp import web

    body = b'{"outputs":[]}'

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", handler)
    web.run_app(app, host="127.0.0.1", port=http_port, access_log=None, print=None)


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, *args])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.5)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server {args} did not start")


# --------------------------------------------------------------------------- clients
def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.array(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def sequential_http(port: int, body: bytes, headers: dict[str, str], n: int) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        conn.request("POST", "/v2/models/tiny-mlp/infer", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if i >= 200:  # warm-up
            times.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
    conn.close()
    return percentiles(times)


def sequential_grpc(port: int, x: np.ndarray, n: int) -> tuple[float, float]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.ModelInferRequest(model_name="tiny-mlp")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    times = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        stub.ModelInfer(req)
        if i >= 200:
            times.append(time.perf_counter() - t0)
    channel.close()
    return percentiles(times)


def bare_forward(n: int) -> tuple[float, float]:
    import torch

    from statmux.runtime.local_engine import tiny_mlp

    torch.set_num_threads(1)
    m = tiny_mlp()
    x = torch.rand(1, 16)
    times = []
    with torch.inference_mode():
        for i in range(n + 200):
            t0 = time.perf_counter()
            m.forward({"INPUT0": x})
            if i >= 200:
                times.append(time.perf_counter() - t0)
    return percentiles(times)


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def json_body(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()


async def closed_loop(port: int, x: np.ndarray, seconds: float, concurrency: int) -> float:
    import aiohttp

    body, headers = binary_body(x)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with session.post(
                f"http://127.0.0.1:{port}/v2/models/tiny-mlp/infer", data=body, headers=headers
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            done += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def in_process_throughput(max_batch: int, requests: int = 4000) -> float:
    """The scheduler + engine alone (no HTTP): what dynamic batching buys the group."""
    import torch

    from statmux.runtime.local_engine import LocalEngine, tiny_mlp
    from statmux.runtime.scheduler import Scheduler

    torch.set_num_threads(1)
    engine = LocalEngine(
        [tiny_mlp(features=256, hidden=2048, classes=16, max_batch_size=max_batch)]
    )
    x = {"INPUT0": np.random.default_rng(2).random((1, 256), dtype=np.float32)}

    async def burst() -> float:
        sched = Scheduler(engine)
        t0 = time.perf_counter()
        await asyncio.gather(*(sched.submit("tiny-mlp", x, 1) for _ in range(requests)))
        return requests / (time.perf_counter() - t0)

    try:
        return asyncio.run(burst())
    finally:
        engine.shutdown()


def with_server(args: list[str], port: int, fn: Callable[[], T]) -> T:
    proc = start(args, port)
    try:
        return fn()
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--serve-statmux":
        serve_statmux(int(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "big")
        return 0
    if argv and argv[0] == "--serve-raw":
        serve_raw(int(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args(argv)
    n = args.requests
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)

    fwd = bare_forward(n)
    print(f"bare forward (tiny MLP, batch 1)        p50 {fwd[0]:.3f} ms  p99 {fwd[1]:.3f} ms")

    raw_port = free_port()
    body, headers = binary_body(x)
    raw: tuple[float, float] = with_server(
        ["--serve-raw", str(raw_port)], raw_port, lambda: sequential_http(raw_port, body, {}, n)
    )
    print(f"raw aiohttp handler                     p50 {raw[0]:.3f} ms  p99 {raw[1]:.3f} ms")

    hp, gp = free_port(), free_port()

    def latency_suite() -> dict[str, tuple[float, float]]:
        return {
            "statmux REST binary": sequential_http(hp, body, headers, n),
            "statmux REST JSON (no Content-Type)": sequential_http(hp, json_body(x), {}, n),
            "statmux gRPC": sequential_grpc(gp, x, n),
        }

    results: dict[str, tuple[float, float]] = with_server(
        ["--serve-statmux", str(hp), str(gp), "8", "tiny"], hp, latency_suite
    )
    for name, (p50, p99) in results.items():
        print(
            f"{name:<40}p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
            f"(overhead over forward p50 {p50 - fwd[0]:.3f} ms)"
        )

    for max_batch in (1, 8):
        rps = in_process_throughput(max_batch)
        print(
            f"throughput, MLP 256-2048-16, scheduler+engine in process, "
            f"max_batch_size {max_batch}: {rps:.0f} req/s"
        )
    xb = np.random.default_rng(1).random((1, 256), dtype=np.float32)
    for max_batch in (1, 8):
        port, gport = free_port(), free_port()
        rps = with_server(
            ["--serve-statmux", str(port), str(gport), str(max_batch), "big"],
            port,
            lambda port=port: asyncio.run(closed_loop(port, xb, args.seconds, args.concurrency)),
        )
        print(
            f"throughput, MLP 256-2048-16, {args.concurrency} clients, "
            f"max_batch_size {max_batch}: {rps:.0f} req/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
