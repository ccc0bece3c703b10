"""Are independent `statmux plan` runs monotone in GPUs? Per-step attainment and every drop.

    python benchmarks/monotone_sweep.py [--only TEXT] [--span K] [--duration S] [--json]

For each generated setting of benchmarks/placement_vs_alpaserve.py, the default policy plans
the same ModelSet independently (a fresh problem per run, nothing carried between runs) at
its GPU count ± `--span`; every step whose attainment is below the previous count's is a
drop. Also prints the statmux CPU seconds per run (process time), so the cost of
monotonicity can be read next to the benchmark's time ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from placement_vs_alpaserve import SETTINGS, generated_modelset

from statmux.placement.capacity import with_gpus
from statmux.placement.planner import build_problem, run_policy
from statmux.placement.scenarios import modelset


def sweep(setting: dict[str, Any], duration: float, span: int) -> list[dict[str, Any]]:
    spec = generated_modelset(setting, duration).spec
    n = setting["gpus"]
    rows = []
    for gpus in range(max(1, n - span), n + span + 1):
        problem = build_problem(with_gpus(spec, gpus))
        cpu = time.process_time()
        ev = run_policy(problem, "statmux")
        rows.append(
            {
                "gpus": gpus,
                "attainment": ev.attainment,
                "cpu_seconds": round(time.process_time() - cpu, 3),
                "simulations": ev.simulations,
                "placement": ev.result.placement.describe(),
            }
        )
    return rows


def drops(rows: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(from GPUs, to GPUs, points lost) for every step that lowers the attainment."""
    out = []
    for a, b in itertools.pairwise(rows):
        if b["attainment"] < a["attainment"]:
            out.append((a["gpus"], b["gpus"], 100 * (a["attainment"] - b["attainment"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="only the settings whose name contains this")
    parser.add_argument("--span", type=int, default=4, help="GPU counts each side (default 4)")
    parser.add_argument("--duration", type=float, default=300.0, help="trace seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    warm = build_problem(modelset(["bert-1.3b"] * 2, gpus=2, rate=5, duration=30).spec)
    run_policy(warm, "statmux")  # the simulator's JIT compile, outside the timings
    out: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        if args.only and args.only not in name:
            continue
        rows = sweep(setting, args.duration, args.span)
        out[name] = {"rows": rows, "drops": drops(rows)}
        if not args.json:
            steps = " ".join(f"{r['gpus']}:{100 * r['attainment']:.2f}" for r in rows)
            lost = ", ".join(f"{a}→{b} −{d:.2f}" for a, b, d in out[name]["drops"]) or "none"
            cpu = max(r["cpu_seconds"] for r in rows)
            print(f"{name}\n  {steps}\n  drops: {lost}; max CPU s per run {cpu:.2f}", flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    total = sum(len(v["drops"]) for v in out.values())
    print(f"\n{total} drops in {sum(len(v['rows']) - 1 for v in out.values())} steps")


if __name__ == "__main__":
    main()
