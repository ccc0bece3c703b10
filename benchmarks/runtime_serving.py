"""`statmux runtime` end to end: a real multi-process group served over REST, per switch interval.

    python benchmarks/runtime_serving.py [--pp 2] [--preset bert-small] [--seq 16]
                                         [--switch-interval default 0.001 0.0002]
                                         [--requests 300] [--seconds 4] [--concurrency 8]

For each `--switch-interval` (`default`: Python's 0.005 s) it launches the pp-rank group as
`statmux runtime` processes (MASTER_ADDR/PORT, RANK, WORLD_SIZE; one intra-op thread per
rank) and prints:
  - sequential REST inference latency p50/p99 (one keep-alive connection);
  - under `--concurrency` closed-loop inference clients: throughput, their p50/p99, and the
    p50/p99 of a GET /v2/health/ready probe sent meanwhile. The probe does no inference, so
    its latency is the event loop's responsiveness while the engine's dispatch and receive
    threads hold the GIL between torch ops (starvation would show here first).
Figures only; compare rows of one run (a shared machine's load changes between runs).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from statmux.placement.plan import Plan, PlanCluster, PlanGroup, PlanModel, Predicted
from statmux.placement.spec import WeightSource


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(pp: int, preset: str) -> Plan:
    weights = WeightSource(source="synthetic", architecture="bert", preset=preset, dtype="float32")
    model = PlanModel(
        name="bert",
        slo_seconds=60.0,  # the benchmark measures serving, not admission
        max_batch_size=8,
        stage_latency_seconds={1: [0.01] * pp},
        weight_bytes_per_gpu=0,
        weights=weights,
    )
    group = PlanGroup(name="g0", gpus=pp, pp=pp, tp=1, memory_per_gpu_bytes=0, models=[model])
    return Plan(
        model_set="bench",
        policy="manual",
        cluster=PlanCluster(gpus=pp, gpu_memory_bytes=10**9, gpus_per_node=8),
        groups=[group],
        predicted=Predicted(attainment=1.0),
    )


def launch(
    plan_file: Path,
    pp: int,
    http_port: int,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start the pp ranks of group g0 and wait until it is ready. `env` defaults to this
    process's environment with one intra-op thread per rank."""
    base = dict(env) if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"}
    master = free_port()
    procs = []
    for rank in range(pp):
        cmd = [sys.executable, "-m", "statmux.runtime.main", "--plan", str(plan_file)]
        cmd += ["--group", "g0", "--host", "127.0.0.1", "--http-port", str(http_port)]
        cmd += ["--no-grpc", "--log-level", "WARNING", *flags]
        rank_env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master)}
        rank_env |= {"RANK": str(rank), "WORLD_SIZE": str(pp)}
        procs.append(subprocess.Popen(cmd, env=rank_env))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return procs
        except OSError:
            pass
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.3)
    stop(procs)
    raise RuntimeError("the group did not become ready")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    procs[0].terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def body(seq: int) -> tuple[bytes, dict[str, str]]:
    ids = np.random.default_rng(0).integers(0, 100, (1, seq), dtype=np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "datatype": "INT64",
                    "shape": list(ids.shape),
                    "parameters": {"binary_data_size": ids.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + ids.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def ms(samples: list[float]) -> str:
    a = np.array(samples) * 1000
    return f"p50 {np.percentile(a, 50):7.2f} ms  p99 {np.percentile(a, 99):7.2f} ms"


def sequential(port: int, payload: bytes, headers: dict[str, str], n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        conn.request("POST", "/v2/models/bert/infer", body=payload, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        if i >= 20:
            times.append(time.perf_counter() - t0)
    conn.close()
    return times


async def loaded(
    port: int, payload: bytes, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, list[float], list[float]]:
    import aiohttp

    infer_times: list[float] = []
    probe_times: list[float] = []
    stop_at = time.perf_counter() + seconds
    url = f"http://127.0.0.1:{port}"

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            async with session.post(
                f"{url}/v2/models/bert/infer", data=payload, headers=headers
            ) as resp:
                await resp.read()
            infer_times.append(time.perf_counter() - t0)

    async def probe(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            async with session.get(f"{url}/v2/health/ready") as resp:
                await resp.read()
            probe_times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)

    connector = aiohttp.TCPConnector(limit=concurrency + 1)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(probe(session), *(client(session) for _ in range(concurrency)))
        rps = len(infer_times) / (time.perf_counter() - t0)
    return rps, infer_times, probe_times


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--preset", default="bert-small")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--switch-interval", nargs="+", default=["default", "0.001", "0.0002"])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    payload, headers = body(args.seq)
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan(args.pp, args.preset).write(plan_file)
        print(f"pp{args.pp} {args.preset}, batch 1 x seq {args.seq}; load: {os.getloadavg()}")
        for switch in args.switch_interval:
            port = free_port()
            flags = [] if switch == "default" else ["--switch-interval", switch]
            procs = launch(plan_file, args.pp, port, flags)
            try:
                seq = sequential(port, payload, headers, args.requests)
                rps, inf, probe = asyncio.run(
                    loaded(port, payload, headers, args.seconds, args.concurrency)
                )
            finally:
                stop(procs)
            print(f"switch interval {switch:>8}: sequential infer {ms(seq)}")
            print(
                f"{'':27}{args.concurrency} clients: {rps:6.0f} req/s, infer {ms(inf)}; "
                f"ready probe {ms(probe)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
