"""Per-request CPU of a real group: every rank's CPU time over sequential requests.

    PYTHONPATH=. python benchmarks/group_cpu.py [--pp 2] [--preset tiny] [--seq 16]
                                                [--requests 300]

Launches a pp-rank BERT group as `statmux runtime` processes on this machine (the Plan of
benchmarks/runtime_serving.py), sends `--requests` sequential REST requests (batch 1 x
`--seq` tokens) over one keep-alive connection, and reads the ranks' user + system CPU
time from /proc before and after. Rows:
  - every rank with as many intra-op threads as the machine has cores (torch's default,
    what every rank used before the runtime sized its pool);
  - the runtime's default for the ranks of one pod sharing its CPUs (NPROC_PER_NODE=pp:
    cores / pp threads each);
  - a direct forward of the whole model in this process, one thread (no server).
Figures only; compare rows of one run (a shared machine's load changes between runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import runtime_serving as rs  # its Plan, request body and client

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


def group_row(
    args: argparse.Namespace, plan_file: Path, extra: list[str], env: dict[str, str]
) -> tuple[float, list[float]]:
    payload, headers = rs.body(args.seq)
    port = rs.free_port()
    procs = rs.launch(plan_file, args.pp, port, extra, env)
    try:
        rs.sequential(port, payload, headers, 30)  # warm-up
        before = sum(cpu_seconds(p.pid) for p in procs)
        times = rs.sequential(port, payload, headers, args.requests)
        after = sum(cpu_seconds(p.pid) for p in procs)
    finally:
        rs.stop(procs)
    # rs.sequential sends 20 warm-up requests of its own before the timed ones
    return (after - before) / (args.requests + 20), times


def direct_row(args: argparse.Namespace) -> tuple[float, list[float]]:
    import torch

    from statmux.placement.spec import WeightSource
    from statmux.runtime.checkpoint import build_full_model
    from statmux.runtime.presets import resolve_config

    torch.set_num_threads(1)
    w = WeightSource(source="synthetic", architecture="bert", preset=args.preset, dtype="float32")
    model = build_full_model(resolve_config(w), w).eval()
    ids = torch.randint(0, 100, (1, args.seq))
    inputs = [ids, torch.ones_like(ids), torch.zeros_like(ids)]
    times = []
    with torch.inference_mode():
        for _ in range(20):
            model(inputs)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.requests):
            t0 = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return cpu / args.requests, times


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NPROC_PER_NODE")}
    print(
        f"pp{args.pp} bert {args.preset}, batch 1 x seq {args.seq}, {cores} cores; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        rs.plan(args.pp, args.preset).write(plan_file)
        rows = [
            (
                f"{cores} threads per rank (torch's default)",
                group_row(args, plan_file, ["--intra-op-threads", str(cores)], base),
            ),
            (
                f"runtime default, NPROC_PER_NODE={args.pp}",
                group_row(args, plan_file, [], base | {"NPROC_PER_NODE": str(args.pp)}),
            ),
            ("direct forward, 1 thread", direct_row(args)),
        ]
    for label, (cpu, times) in rows:
        a = np.array(times) * 1000
        print(
            f"{label:42} CPU {cpu * 1000:6.2f} ms/request   latency p50 "
            f"{np.percentile(a, 50):7.2f} ms  p99 {np.percentile(a, 99):7.2f} ms"
        )
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
