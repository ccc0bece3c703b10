"""Honest admission under overload: admitted-within-SLO and goodput at 1x, 2x and 3x load.

    PYTHONPATH=. python benchmarks/admission.py [--seconds 8] [--rate 60] [--json]

One real front end (REST, scheduler, admission, dynamic batching) serves two models on a
LocalEngine whose forward takes 60 ms + 15 ms per row (a sleep: it releases the GIL, like
a GPU kernel), max batch 4, so the group can do about 33 requests/s with full batches.
Model `a` has a 450 ms SLO, `b` 900 ms; the Plan's profile is accurate. (Slow batches keep
the front end's CPU share small, so the figures hold on a busy machine.) An open-loop
Poisson client sends `--rate` requests/s (1x), then twice and three times that, half to
each model, over keep-alive connections.

For each load: the requests admitted at arrival, those rejected at arrival (429), those
admitted but given up at dispatch (`dropped`, also a 429 to the client: a broken promise,
so they count as admitted and not within SLO), the share of admitted requests that
finished within their SLO (by the server's own count, statmux_requests_within_slo_total
over successes plus drops, and by the client's clock), goodput (successes within SLO per
second) relative to the goodput measured at 1x, the drift ratio and the 1-minute load
average of the machine (os.getloadavg) at the end of the load. Goals (issue 9): >= 99 %
of admitted within SLO at every load; goodput at 2x and 3x >= 90 % of the 1x figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import time
from typing import Any

import aiohttp
import torch

from statmux.runtime.engine import ModelInfo, TensorSpec
from statmux.runtime.frontend import FrontEnd
from statmux.runtime.local_engine import LocalEngine, LocalModel
from statmux.runtime.server_runner import BackgroundServer

BASE_S, PER_ROW_S, MAX_BATCH = 0.060, 0.015, 4
SLO_S = {"a": 0.45, "b": 0.90}


def sleepy(name: str) -> LocalModel:
    def forward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        time.sleep(BASE_S + PER_ROW_S * x["INPUT0"].shape[0])
        return {"OUTPUT0": x["INPUT0"] * 2}

    info = ModelInfo(
        name=name,
        platform="statmux-bench-sleep",
        inputs=[TensorSpec("INPUT0", "FP32", (-1, 4))],
        outputs=[TensorSpec("OUTPUT0", "FP32", (-1, 4))],
        max_batch_size=MAX_BATCH,
        slo_seconds=SLO_S[name],
        stage_latency_s={b: [BASE_S + PER_ROW_S * b] for b in range(1, MAX_BATCH + 1)},
    )
    return LocalModel(info, torch.nn.Identity(), forward)


BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
).encode()
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


def server_counts(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        if name == "statmux_requests_within_slo_total":
            out["within"] = out.get("within", 0) + float(value)
        elif name == "statmux_requests_total" and 'outcome="success"' in labels:
            out["success"] = out.get("success", 0) + float(value)
        elif name == "statmux_requests_rejected_total" and 'reason="deadline"' in labels:
            out["dropped"] = out.get("dropped", 0) + float(value)
        elif name == "statmux_profile_drift_ratio":
            out["drift"] = max(out.get("drift", 0), float(value))
    return out


async def run_load(url: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results: list[tuple[str, int, float]] = []
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{url}/metrics") as r:
            before = server_counts(await r.text())

        async def one(model: str) -> None:
            start = time.monotonic()
            async with session.post(f"{url}/v2/models/{model}/infer", data=BODY) as r:
                await r.read()
                results.append((model, r.status, time.monotonic() - start))

        tasks = []
        t0 = time.monotonic()
        t = 0.0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one("a" if rng.random() < 0.5 else "b")))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        async with session.get(f"{url}/metrics") as r:
            after = server_counts(await r.text())
    ok = [(m, lat) for m, status, lat in results if status == 200]
    client_within = sum(lat <= SLO_S[m] for m, lat in ok)
    success = after["success"] - before.get("success", 0)
    within = after["within"] - before.get("within", 0)
    # admitted at arrival but given up at dispatch (a 429 to the client): a broken promise
    dropped = after.get("dropped", 0) - before.get("dropped", 0)
    return {
        "rate": rate,
        "sent": len(results),
        "admitted": len(ok) + int(dropped),
        "rejected": sum(status == 429 for _, status, _ in results) - int(dropped),
        "dropped": int(dropped),
        "other": sum(status not in (200, 429) for _, status, _ in results),
        "admitted_within_slo_server": within / (success + dropped) if success else 1.0,
        "admitted_within_slo_client": client_within / (len(ok) + dropped) if ok else 1.0,
        "goodput": within / elapsed,
        "drift": after.get("drift", 1.0),
        "loadavg": os.getloadavg()[0],
    }


def serve(port: Any, stop: Any) -> None:
    """The server process (the client does not share its GIL)."""
    engine = LocalEngine([sleepy("a"), sleepy("b")])
    srv = BackgroundServer(FrontEnd(engine), grpc_port=None)
    port.put(srv.http_port)
    stop.wait()
    srv.stop()
    engine.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=20.0, help="1x load, requests/s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(port_q, stop), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port_q.get(timeout=120)}"
    rows = []
    try:
        for i, factor in enumerate((1, 2, 3)):
            rows.append(
                {"load": f"{factor}x"}
                | asyncio.run(run_load(url, args.rate * factor, args.seconds, seed=i))
            )
    finally:
        stop.set()
        server.join(60)
    base = rows[0]["goodput"]
    for r in rows:
        r["goodput_vs_1x"] = r["goodput"] / base if base else 0.0
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{'load':>4} {'req/s':>6} {'sent':>5} {'admitted':>8} {'429':>5} {'dropped':>7} "
        f"{'other':>5} {'in SLO (server)':>15} {'in SLO (client)':>15} {'goodput/s':>9} "
        f"{'vs 1x':>6} {'drift':>5} {'loadavg':>7}"
    )
    for r in rows:
        print(
            f"{r['load']:>4} {r['rate']:>6.0f} {r['sent']:>5} {r['admitted']:>8} "
            f"{r['rejected']:>5} {r['dropped']:>7} {r['other']:>5} "
            f"{r['admitted_within_slo_server']:>15.2%} {r['admitted_within_slo_client']:>15.2%} "
            f"{r['goodput']:>9.1f} {r['goodput_vs_1x']:>6.0%} {r['drift']:>5.2f} "
            f"{r['loadavg']:>7.1f}"
        )


if __name__ == "__main__":
    main()
