"""Are independent `statmux plan` runs monotone in resources? Per-step attainment, every drop.

    python benchmarks/monotone_sweep.py [--resource gpus|memory|slo] [--only TEXT]
        [--span K] [--steps A,B,...] [--duration S] [--chain [--min-gain POINTS]] [--json]

For each generated setting of benchmarks/placement_vs_alpaserve.py, the default policy plans
the same ModelSet independently (a fresh problem per run, nothing carried between runs) at
its GPU count ± `--span` (`--resource memory`: gpuMemory 6 to 24 GiB; `slo`: sloScale 1.5
to 8); every step whose attainment is below the previous one's is a drop. Also prints the
largest statmux CPU seconds of a run (process time).

`--chain`: also the re-plan chain, each step given the previous step's plan as the incumbent
(`statmux plan --previous`): the same search per step (its answer is the independent run's),
then the incumbent scored (and, when the cluster grew, improved by a bounded local search
that may use the new GPUs or memory) and kept unless the search beats it by more than
`--min-gain` points (the ModelSet's minGainToReplace by default); prints the
chain's attainment, its drops, at how many steps the incumbent was kept or improved, the
points the improvement gained over the better of the search and the incumbent, and the CPU
seconds of the incumbent's part against the search's.
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
from statmux.placement.plan import Plan
from statmux.placement.planner import best_candidate, build_problem, make_plan, run_policy
from statmux.placement.scenarios import modelset

MEMORY = ("6Gi", "8Gi", "10Gi", "13Gi", "16Gi", "24Gi")
SLO_SCALES = (1.5, 2.0, 3.0, 5.0, 8.0)


def steps(
    setting: dict[str, Any], resource: str, span: int, given: list[Any] | None = None
) -> list[Any]:
    if given:
        return given
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
    chain: bool = False,
    given: list[Any] | None = None,
    min_gain: float | None = None,
) -> list[dict[str, Any]]:
    rows = []
    previous: Plan | None = None
    for step in steps(setting, resource, span, given):
        if resource == "slo":
            ms = build({**setting, "slo_scale": step}, duration)
        else:
            ms = build(setting, duration)
        if resource == "memory":
            ms.spec.cluster.gpu_memory = step
        elif resource == "gpus":
            ms = ms.model_copy(update={"spec": with_gpus(ms.spec, step)})
        problem = build_problem(ms.spec)
        cpu = time.process_time()
        ev = run_policy(problem, "statmux")
        row = {
            "step": step,
            "attainment": ev.attainment,
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "simulations": ev.simulations,
            "placement": ev.result.placement.describe(),
        }
        if chain:
            # what `statmux plan --no-baselines --previous` does after the same search
            cpu = time.process_time()
            points = ms.spec.placement.search.min_gain_to_replace if min_gain is None else min_gain
            final, info = best_candidate(problem, ev, [], previous, points / 100)
            previous = make_plan(ms, problem, final, [], info)
            row |= {
                "chained": final.attainment,
                "incumbent": None if info is None else info.outcome,
                # by construction at least the previous step's score
                "incumbent_attainment": None if info is None else info.attainment,
                "incumbent_cpu_seconds": round(time.process_time() - cpu, 3),
                "gpus_used": sum(g.gpus for g in previous.groups),
                # models admitted by a previous bound below their (loosened) SLO
                "bounded_models": len(previous.admission_seconds()),
            }
        rows.append(row)
    return rows


def drops(rows: list[dict[str, Any]], key: str = "attainment") -> list[tuple[int, int, float]]:
    """(from, to, points lost) for every step that lowers `key`'s attainment."""
    out = []
    for a, b in itertools.pairwise(rows):
        if b[key] < a[key]:
            out.append((a["step"], b["step"], 100 * (a[key] - b[key])))
    return out


def lost(found: list[tuple[int, int, float]]) -> str:
    return ", ".join(f"{a}→{b} −{d:.2f}" for a, b, d in found) or "none"


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
    parser.add_argument(
        "--steps",
        help="comma-separated steps instead of the defaults (GPU counts, gpuMemory "
        "quantities, or sloScale values), e.g. 5Gi,6Gi,7Gi",
    )
    parser.add_argument(
        "--chain",
        action="store_true",
        help="also re-plan each step with the previous step's plan as the incumbent",
    )
    parser.add_argument(
        "--min-gain",
        type=float,
        help="the chain's placement.search.minGainToReplace in points (default: the "
        "ModelSet's, 0.1 unless set; 0: any strictly higher score replaces the incumbent)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    warm = build_problem(modelset(["bert-1.3b"] * 2, gpus=2, rate=5, duration=30).spec)
    run_policy(warm, "statmux")  # the simulator's JIT compile, outside the timings
    out: dict[str, Any] = {}
    parse = {"gpus": int, "slo": float, "memory": str}[args.resource]
    given = [parse(x) for x in args.steps.split(",")] if args.steps else None
    reference = args.which == "reference"
    settings, build = (
        (REFERENCE, reference_modelset) if reference else (SETTINGS, generated_modelset)
    )
    duration = args.duration or (1200.0 if reference else 300.0)
    for name, setting in settings.items():
        if args.only and args.only not in name:
            continue
        rows = sweep(
            setting, duration, args.span, args.resource, build, args.chain, given, args.min_gain
        )
        out[name] = {"rows": rows, "drops": drops(rows)}
        if args.chain:
            out[name]["chain_drops"] = drops(rows, "chained")
            out[name]["chain"] = chain_summary(rows)
        if not args.json:
            line = " ".join(f"{r['step']}:{100 * r['attainment']:.2f}" for r in rows)
            cpu = max(r["cpu_seconds"] for r in rows)
            found = lost(out[name]["drops"])
            print(f"{name}\n  {line}\n  drops: {found}; max CPU s per run {cpu:.2f}")
            if args.chain:
                line = " ".join(f"{r['step']}:{100 * r['chained']:.2f}" for r in rows)
                c = out[name]["chain"]
                gains = c["improved_gains"]
                print(
                    f"  chained: {line}\n  chain drops: {lost(out[name]['chain_drops'])}; "
                    f"incumbent kept at {c['kept']} of {len(rows) - 1} steps, improved at "
                    f"{len(gains)} (+{sum(gains):.2f} points, max +{max(gains, default=0):.2f} "
                    f"over the better of search and incumbent; {c['wider']} on more GPUs than "
                    f"the incumbent), scored below its previous score at {c['below']}; "
                    f"the plan admits by a previous bound below the SLO at {c['bounded']}; CPU s "
                    f"to score and improve it: max {c['max_cpu']:.3f}, {100 * c['share']:.1f} % "
                    f"of the searches' ({100 * c['max_share']:.1f} % of a step's at most)"
                )
            sys.stdout.flush()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    steps_total = sum(len(v["rows"]) - 1 for v in out.values())
    total = sum(len(v["drops"]) for v in out.values())
    print(f"\n{total} drops in {steps_total} steps (independent runs)")
    if args.chain:
        chained = sum(len(v["chain_drops"]) for v in out.values())
        print(f"{chained} drops in {steps_total} steps (re-plan chain, --previous)")
        gains = [g for v in out.values() for g in v["chain"]["improved_gains"]]
        wider = sum(v["chain"]["wider"] for v in out.values())
        rows = [r for v in out.values() for r in v["rows"]]
        share = sum(r["incumbent_cpu_seconds"] for r in rows) / sum(r["cpu_seconds"] for r in rows)
        print(
            f"incumbent improved at {len(gains)} of {steps_total} steps ({wider} on more GPUs "
            f"than the incumbent): +{sum(gains):.2f} points in all over the better of search "
            f"and incumbent, +{max(gains, default=0):.2f} at most; scoring and improving it "
            f"cost {100 * share:.1f} % of the searches' CPU"
        )


def chain_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the incumbent did along a chain: kept / improved steps, the points an improvement
    gained over the better of the search and the incumbent at its step, improved steps on
    more GPUs than the incumbent, steps where it scored below its previous score (none: with a
    looser SLO it may admit by its previous bound), steps whose plan admits by such a bound,
    and its CPU seconds against the search's."""
    gains = [
        100 * (r["chained"] - max(r["attainment"], r["incumbent_attainment"]))
        for r in rows
        if r["incumbent"] == "improved"
    ]
    pairs = list(itertools.pairwise(rows))
    return {
        "kept": sum(r["incumbent"] == "kept" for r in rows),
        "improved_gains": gains,
        "wider": sum(
            b["incumbent"] == "improved" and b["gpus_used"] > a["gpus_used"] for a, b in pairs
        ),
        "below": sum(
            b["incumbent_attainment"] is not None and b["incumbent_attainment"] < a["chained"]
            for a, b in pairs
        ),
        "bounded": sum(r["bounded_models"] > 0 for r in rows),
        "max_cpu": max(r["incumbent_cpu_seconds"] for r in rows),
        "share": sum(r["incumbent_cpu_seconds"] for r in rows)
        / max(sum(r["cpu_seconds"] for r in rows), 1e-3),
        "max_share": max(r["incumbent_cpu_seconds"] / max(r["cpu_seconds"], 1e-3) for r in rows),
    }


if __name__ == "__main__":
    main()
