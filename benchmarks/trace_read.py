"""Reading a CSV trace of 1 M requests (`time,model`, 50 models): seconds, best of 3.

    python benchmarks/trace_read.py [--rows N]

Target (issue 10): under 1 s. The file is written to a temporary directory first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from statmux.placement.traces import read_csv_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    times = np.sort(rng.random(args.rows) * 3600)
    models = [f"model-{i}" for i in range(50)]
    ids = rng.integers(0, len(models), args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        body = "\n".join(f"{t:.6f},{models[i]}" for t, i in zip(times, ids, strict=True))
        path.write_text("time,model\n" + body + "\n")
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            got, _ = read_csv_trace(path, models)
            best = min(best, time.perf_counter() - start)
        assert got.size == args.rows
        size_mb = path.stat().st_size / 1e6
    print(f"read {args.rows} rows ({size_mb:.0f} MB) in {best:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
