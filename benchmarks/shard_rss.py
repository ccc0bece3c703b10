"""Resident memory of one CPU rank against its shard size: one copy, or two.

    PYTHONPATH=. python benchmarks/shard_rss.py [--preset bert-base]

Builds a rank's shard (pp1, fp32 synthetic weights) and makes it resident the way
runtime/swap.py does on CPU (the module uses the host tensors themselves), then, in a
fresh process, the way it did before (a cloned "device" copy). Prints the RSS growth over
the process's baseline for each, after returning freed memory to the OS (malloc_trim).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import subprocess
import sys


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(preset: str, mode: str) -> None:
    import torch

    from statmux.placement.spec import WeightSource
    from statmux.runtime.checkpoint import build_stage, load_state
    from statmux.runtime.presets import resolve_config
    from statmux.runtime.swap import SwappableShard

    torch.set_num_threads(1)
    ws = WeightSource.model_validate(
        {"source": "synthetic", "architecture": preset.split("-")[0], "preset": preset}
        | {"dtype": "float32"}
    )
    cfg = resolve_config(ws)
    base = rss()
    module = build_stage(cfg, 0, 1)
    shard = SwappableShard(module, load_state(module, ws, 0), torch.device("cpu"))
    if mode == "clone":  # the previous swap_in: a second copy as the "device" weights
        module.load_state_dict({k: v.clone() for k, v in shard.host.items()}, assign=True)
        shard.resident = True
    else:
        shard.swap_in()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    grown = rss() - base
    print(
        f"{mode:>6}: shard {shard.nbytes / 2**20:6.0f} MiB, RSS growth {grown / 2**20:6.0f} MiB "
        f"({grown / shard.nbytes:.2f}x the shard)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--mode", choices=("shared", "clone"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        measure(args.preset, args.mode)
        return
    for mode in ("clone", "shared"):  # one fresh process each: RSS never shrinks back
        subprocess.run(
            [sys.executable, __file__, "--preset", args.preset, "--mode", mode], check=True
        )


if __name__ == "__main__":
    main()
