"""Pipeline overhead: a pp-stage group vs the same model in one process.

    python benchmarks/runtime_pipeline.py                 # CPU, gloo, pp 2 and 4
    python benchmarks/runtime_pipeline.py --device cuda   # NCCL (needs pp x tp GPUs)

For each (pp, batch, seq) it prints the median latency of one batch through the group
(sequential: submit, wait), the single-process latency of the same model, and the
throughput with `--in-flight` batches submitted at once (the pipeline overlaps stages).
Every rank uses one intra-op thread, so on a machine with fewer cores than ranks the
stages compete for CPU: read the overhead at batch 1, short sequences.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import time
from typing import Any

import numpy as np
import torch

from statmux.placement.plan import PlanGroup
from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model
from statmux.runtime.dist_env import DistInfo
from statmux.runtime.group import start_group
from statmux.runtime.presets import resolve_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _weights(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "architecture": "bert",
        "preset": args.preset,
        "dtype": "float32" if args.device == "cpu" else "float16",
    }


def _request(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(0).integers(0, 1000, (batch, seq), dtype=np.int64)}


def _time(fn: Any, reps: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, pp: int, out: Any) -> None:
    torch.set_num_threads(1)
    model = {
        "name": "m",
        "sloSeconds": 60.0,  # the engine is driven directly: no admission
        "stageLatencySeconds": {"1": [0.01] * pp},
        "weightBytesPerGpu": 0,
        "weights": _weights(args),
    }
    group = PlanGroup.model_validate(
        {"name": "bench", "gpus": pp, "pp": pp, "tp": 1, "memoryPerGpuBytes": 0, "models": [model]}
    )
    info = DistInfo(rank, world, "127.0.0.1", port, local_rank=rank)
    engine = start_group(group, info, args.device)
    if engine is None:
        return
    rows = []
    try:
        for batch in args.batch:
            for seq in args.seq:
                req = _request(batch, seq)

                def one(req: dict[str, np.ndarray] = req) -> None:
                    engine.submit("m", [req]).result()

                def many(req: dict[str, np.ndarray] = req) -> None:
                    futures = [engine.submit("m", [req]) for _ in range(args.in_flight)]
                    for f in futures:
                        f.result()

                latency = _time(one, args.reps)
                burst = _time(many, max(1, args.reps // 4))
                rows.append((batch, seq, latency, args.in_flight / burst))
    finally:
        engine.shutdown()
    out.put(rows)


def _single(args: argparse.Namespace) -> dict[tuple[int, int], tuple[float, float]]:
    torch.set_num_threads(1)
    ws = WeightSource.model_validate(_weights(args))
    device = torch.device(args.device)
    model = build_full_model(resolve_config(ws), ws).to(device)
    res = {}
    with torch.inference_mode():
        for batch in args.batch:
            for seq in args.seq:
                ids = torch.from_numpy(_request(batch, seq)["input_ids"]).to(device)
                xs = [ids, torch.ones_like(ids), torch.zeros_like(ids)]

                def one(xs: list[torch.Tensor] = xs) -> None:
                    model(xs)[0].cpu()

                t = _time(one, args.reps)
                res[(batch, seq)] = (t, 1.0 / t)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", default="bert-small", help="a bert preset (default bert-small)")
    ap.add_argument("--pp", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--in-flight", type=int, default=8)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")

    single = _single(args)
    ctx = mp.get_context("spawn")
    table = []
    for pp in args.pp:
        if args.device == "cuda" and pp > torch.cuda.device_count():
            print(f"pp{pp}: skipped, needs {pp} GPUs (NCCL cannot put two ranks on one GPU)")
            continue
        out = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_rank, args=(r, pp, port, args, pp, out)) for r in range(pp)]
        for p in procs:
            p.start()
        rows = out.get(timeout=1800)
        for p in procs:
            p.join()
        table += [(pp, *row) for row in rows]

    print(f"\nmodel {args.preset} on {args.device}, one thread per rank, median of {args.reps}")
    head = (
        f"{'pp':>3} {'batch':>5} {'seq':>5} {'single ms':>10} {'group ms':>9} {'overhead ms':>11}"
    )
    head += f" {'single req/s':>12} {'group req/s':>11}"
    print(head)
    for pp, batch, seq, latency, rate in table:
        s_lat, s_rate = single[(batch, seq)]
        print(
            f"{pp:>3} {batch:>5} {seq:>5} {s_lat * 1e3:>10.2f} {latency * 1e3:>9.2f} "
            f"{(latency - s_lat) * 1e3:>11.2f} {s_rate:>12.1f} {rate:>11.1f}"
        )


if __name__ == "__main__":
    main()
