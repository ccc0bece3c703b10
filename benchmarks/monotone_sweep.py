"""Are independent `statmux plan` runs monotone in resources? Per-step attainment, every drop.

    python benchmarks/monotone_sweep.py [--resource gpus|memory|slo] [--only TEXT]
        [--span K] [--duration S] [--json]

For each generated setting of benchmarks/placement_vs_alpaserve.py, the default policy plans
the same ModelSet independently (a fresh problem per run, nothing carried between runs) at
its GPU count ± `--span` (`--resource memory`: gpuMemory 6 to 24 GiB; `slo`: sloScale 1.5
to 8); every step whose attainment is below the previous one's is a drop. Also prints the
largest statmux CPU seconds of a run (process time).
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

from placement_vs_alpaserve import REFERENCE, SETTINGS, generated_modelset, reference_modelset

from statmux.placement.capacity import with_gpus
from statmux.placement.planner import build_problem, run_policy
from statmux.placement.scenarios import modelset

MEMORY = ("6Gi", "8Gi", "10Gi", "13Gi", "16Gi", "24Gi")
SLO_SCALES = (1.5, 2.0, 3.0, 5.0, 8.0)


def steps(setting: dict[str, Any], resource: str, span: int) -> list[Any]:
    if resource == "memory":
        return list(MEMORY)
    if resource == "slo":
        return list(SLO_SCALES)
    n = setting["gpus"]
    return list(range(max(1, n - span), n + span + 1))


def sweep(
    setting: dict[str, Any],
    duration: float,
    span: int,
    resource: str = "gpus",
    build: Any = generated_modelset,
) -> list[dict[str, Any]]:
    rows = []
    for step in steps(setting, resource, span):
        if resource == "slo":
            spec = build({**setting, "slo_scale": step}, duration).spec
        else:
            spec = build(setting, duration).spec
        if resource == "memory":
            spec.cluster.gpu_memory = step
        elif resource == "gpus":
            spec = with_gpus(spec, step)
        problem = build_problem(spec)
        cpu = time.process_time()
        ev = run_policy(problem, "statmux")
        rows.append(
            {
                "step": step,
                "attainment": ev.attainment,
                "cpu_seconds": round(time.process_time() - cpu, 3),
                "simulations": ev.simulations,
                "placement": ev.result.placement.describe(),
            }
        )
    return rows


def drops(rows: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(from, to, points lost) for every step that lowers the attainment."""
    out = []
    for a, b in itertools.pairwise(rows):
        if b["attainment"] < a["attainment"]:
            out.append((a["step"], b["step"], 100 * (a["attainment"] - b["attainment"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--resource", choices=("gpus", "memory", "slo"), default="gpus", help="what grows"
    )
    parser.add_argument(
        "--set",
        dest="which",
        choices=("generated", "reference"),
        default="generated",
        help="the generated settings (default) or the issue's reference settings (GPUs only)",
    )
    parser.add_argument("--only", help="only the settings whose name contains this")
    parser.add_argument("--span", type=int, default=4, help="GPU counts each side (default 4)")
    parser.add_argument(
        "--duration", type=float, help="trace seconds (default: 300; reference: 1200)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    warm = build_problem(modelset(["bert-1.3b"] * 2, gpus=2, rate=5, duration=30).spec)
    run_policy(warm, "statmux")  # the simulator's JIT compile, outside the timings
    out: dict[str, Any] = {}
    reference = args.which == "reference"
    settings, build = (
        (REFERENCE, reference_modelset) if reference else (SETTINGS, generated_modelset)
    )
    duration = args.duration or (1200.0 if reference else 300.0)
    for name, setting in settings.items():
        if args.only and args.only not in name:
            continue
        rows = sweep(setting, duration, args.span, args.resource, build)
        out[name] = {"rows": rows, "drops": drops(rows)}
        if not args.json:
            line = " ".join(f"{r['step']}:{100 * r['attainment']:.2f}" for r in rows)
            lost = ", ".join(f"{a}→{b} −{d:.2f}" for a, b, d in out[name]["drops"]) or "none"
            cpu = max(r["cpu_seconds"] for r in rows)
            print(f"{name}\n  {line}\n  drops: {lost}; max CPU s per run {cpu:.2f}", flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    total = sum(len(v["drops"]) for v in out.values())
    print(f"\n{total} drops in {sum(len(v['rows']) - 1 for v in out.values())} steps")


if __name__ == "__main__":
    main()
