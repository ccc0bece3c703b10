"""CLI start-up: wall time of `statmux --help` and of every subcommand's `--help`.

    python benchmarks/cli_startup.py [--repeats 5] [--json]

Each command runs `--repeats` times as a fresh `python -m statmux ...` process (warm: the
first run of each is discarded, so the OS file cache and the bytecode cache are filled).
Prints the median and the best wall time per command, and the median CPU time (user + sys
of the child, which a loaded machine inflates much less than wall time), next to a bare
`python -c pass`, the floor on this machine. Target: `statmux --help` <= 0.5 s warm.
Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, capture_output=True, env=env, check=False)  # warm-up, discarded
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, env=env, check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-400:]!r}")
    return walls, cpus


def subcommands() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from statmux.cli import build_parser

    return build_parser()[1].names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    py = sys.executable
    cases: dict[str, list[str]] = {"python -c pass (floor)": [py, "-c", "pass"]}
    cases["statmux --help"] = [py, "-m", "statmux", "--help"]
    for name in subcommands():
        cases[f"statmux {name} --help"] = [py, "-m", "statmux", name, "--help"]
    figures: dict[str, dict[str, float]] = {}
    for label, cmd in cases.items():
        try:
            walls, cpus = timed(cmd, args.repeats)
        except SystemExit as e:  # e.g. a part whose extra is not installed
            print(f"{label}: skipped ({e})", file=sys.stderr)
            continue
        figures[label] = {
            "median_s": statistics.median(walls),
            "best_s": min(walls),
            "cpu_s": statistics.median(cpus),
        }
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"load_average": load, "commands": figures}))
        return
    print(f"load average {load:.1f}; {args.repeats} warm runs each")
    print(f"{'command':34} {'median s':>9} {'best s':>8} {'cpu s':>7}")
    for label, f in figures.items():
        print(f"{label:34} {f['median_s']:9.3f} {f['best_s']:8.3f} {f['cpu_s']:7.3f}")


if __name__ == "__main__":
    main()
