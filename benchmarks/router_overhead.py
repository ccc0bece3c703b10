"""What the router adds to a request: p50 latency through `statmux router` minus directly to
the group, tiny model, loopback, REST with the binary tensor extension.

    python benchmarks/router_overhead.py [--requests 2000] [--rows 1] [--tokens 8]
                                         [--group real|stub] [--event-loop auto|uvloop|asyncio]

Starts one real group (`statmux runtime`, pp1, synthetic tiny BERT, CPU) and the real router
in front of it, both as subprocesses on 127.0.0.1. One keep-alive client alternates a request
to the group with the same request through the router, so both see the same machine load;
it prints the p50 of each path and the p50 of the per-pair difference (the overhead). Target:
<= 0.3 ms.

`--group stub` puts a bare asyncio responder (a canned answer of the same size, no model
compute) in place of the group: on a busy machine the tiny model's own latency varies by
milliseconds, and the stub isolates what the router adds. `--event-loop` is passed to the
router (default auto: uvloop when installed).

Wall-clock figures need a quiet machine. The CPU time the router process spent per request
(from /proc, user + system) is printed too: it hardly depends on what else runs, and on an
idle machine the router's wall-clock overhead is about that plus one loopback round trip.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BERT = {"source": "synthetic", "architecture": "bert", "preset": "tiny", "dtype": "float32"}


def plan() -> dict:
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "Plan",
        "modelSet": "bench",
        "policy": "manual",
        "cluster": {"gpus": 1, "gpuMemoryBytes": 1e9, "gpusPerNode": 1},
        "groups": [
            {
                "name": "g0",
                "gpus": 1,
                "pp": 1,
                "tp": 1,
                "memoryPerGpuBytes": 0,
                "models": [
                    {
                        "name": "bert",
                        "sloSeconds": 60.0,
                        "stageLatencySeconds": {"1": [0.001]},
                        "weightBytesPerGpu": 1e6,
                        "weights": BERT,
                    }
                ],
            }
        ],
        "predicted": {"attainment": 1.0},
    }


def serve_stub(port: int) -> None:
    """A stand-in group: /v2/health/ready answers 200, an inference request a canned binary
    answer (1 x 8 x 32 FP32, the tiny BERT's), read and written with no HTTP library."""
    import asyncio

    head = json.dumps(
        {
            "model_name": "bert",
            "model_version": "1",
            "outputs": [
                {
                    "name": "last_hidden_state",
                    "datatype": "FP32",
                    "shape": [1, 8, 32],
                    "parameters": {"binary_data_size": 1024},
                }
            ],
        }
    ).encode()
    infer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
        % (len(head), len(head) + 1024)
        + head
        + bytes(1024)
    )
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    class Stub(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                lines = self.buf[:end].split(b"\r\n")
                length = next(
                    (int(v) for k, _, v in (x.partition(b":") for x in lines[1:])
                     if k.strip().lower() == b"content-length"),
                    0,
                )  # fmt: skip
                if len(self.buf) < end + 4 + length:
                    return
                self.buf = self.buf[end + 4 + length :]
                self.transport.write(infer if b"/infer" in lines[0] else ok)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary_request(rows: int, tokens: int) -> tuple[bytes, dict[str, str]]:
    ids = np.full((rows, tokens), 7, dtype=np.int64)
    raw = ids.tobytes()
    header = {
        "inputs": [
            {
                "name": "input_ids",
                "datatype": "INT64",
                "shape": list(ids.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + raw, headers


def wait_ready(port: int, procs: list[subprocess.Popen], limit: float = 180) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a server exited with {p.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"127.0.0.1:{port} did not become ready")


def timed(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    conn.request("POST", "/v2/models/bert/infer", body, headers)
    resp = conn.getresponse()
    resp.read()
    took = time.perf_counter() - start
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}")
    return took


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(seconds: np.ndarray) -> str:
    p50, p90 = np.median(seconds) * 1e3, np.percentile(seconds, 90) * 1e3
    return f"p50 {p50:.3f} ms  p90 {p90:.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="pairs measured (default 2000)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--group", choices=("real", "stub"), default="real")
    ap.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    ap.add_argument("--serve-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_stub is not None:
        serve_stub(args.serve_stub)
        return
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    tmp = Path(tempfile.mkdtemp(prefix="statmux-bench-"))
    (tmp / "plan.json").write_text(json.dumps(plan()))
    group_port, router_port = free_port(), free_port()
    py = [sys.executable, "-m", "statmux"]
    common = ["--plan", str(tmp / "plan.json"), "--host", "127.0.0.1", "--no-grpc"]
    group_cmd = [*py, "runtime", *common, "--group", "g0", "--http-port", str(group_port)]
    if args.group == "stub":
        group_cmd = [sys.executable, __file__, "--serve-stub", str(group_port)]
    group = subprocess.Popen(
        group_cmd,
        env=env,
        cwd=root,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    router_flags = ["--http-port", str(router_port), "--log-level", "WARNING"]
    router_flags += ["--event-loop", args.event_loop]
    router = subprocess.Popen(
        [*py, "router", *common, "--groups", f"g0=127.0.0.1:{group_port}", *router_flags],
        env=env,
        cwd=root,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(group_port, [group])
        wait_ready(router_port, [group, router])
        body, headers = binary_request(args.rows, args.tokens)
        direct = http.client.HTTPConnection("127.0.0.1", group_port)
        routed = http.client.HTTPConnection("127.0.0.1", router_port)
        for _ in range(args.warmup):
            timed(direct, body, headers)
            timed(routed, body, headers)
        d = np.empty(args.requests)
        r = np.empty(args.requests)
        cpu_router, cpu_group = cpu_seconds(router.pid), cpu_seconds(group.pid)
        for i in range(args.requests):
            d[i] = timed(direct, body, headers)
            r[i] = timed(routed, body, headers)
        cpu_router = cpu_seconds(router.pid) - cpu_router
        cpu_group = (cpu_seconds(group.pid) - cpu_group) / 2  # it served both paths
        print(
            f"requests: {args.requests} pairs, input ({args.rows}, {args.tokens}) INT64, "
            f"group: {args.group}, router event loop: {args.event_loop}"
        )
        print(f"direct to the group   {stats(d)}")
        print(f"through the router    {stats(r)}")
        overhead = np.median(r - d) * 1e3
        print(f"router overhead       p50 {overhead:.3f} ms (per-pair difference; target <= 0.3)")
        print(f"difference of p50s        {(np.median(r) - np.median(d)) * 1e3:.3f} ms")
        n = args.requests
        print(f"router CPU per request    {cpu_router / n * 1e3:.3f} ms (user + system)")
        print(f"group CPU per request     {cpu_group / n * 1e3:.3f} ms (for comparison)")
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} cores, load average {load:.1f}")
    finally:
        for p in (router, group):
            p.send_signal(signal.SIGTERM)
        for p in (router, group):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
