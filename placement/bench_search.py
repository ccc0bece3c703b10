"""`statmux bench search`: placement search time on the issue's two reference cases.

Both use a 1-hour Gamma trace at 100 req/s in total, CV 4, SLO 5× single-GPU latency.
Times are warm (the simulator's JIT compile is done first and reported apart). The search
is single-threaded, so CPU seconds equal wall seconds on an idle core; on a loaded machine
the CPU figure is the one to compare.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from statmux.placement.planner import build_problem, run_policy
from statmux.placement.scenarios import BERT_MIX, mixed, modelset

CASES: dict[str, dict[str, Any]] = {
    "48x bert-6.7b / 64 GPUs": {
        "profiles": ["bert-6.7b"] * 48,
        "gpus": 64,
        "target_s": 1.5,
        "alpaserve_published_s": 7.3,
    },
    "72 mixed BERT / 48 GPUs": {
        "profiles": mixed(BERT_MIX, 72),
        "gpus": 48,
        "target_s": 3.0,
        "alpaserve_published_s": 13.2,
    },
}


def bench_search(as_json: bool = False, with_alpaserve: bool = True) -> dict[str, Any]:
    console = Console(stderr=as_json)
    t0 = time.perf_counter()
    warm = build_problem(modelset(["bert-1.3b"] * 2, gpus=2, rate=5, duration=60).spec)
    run_policy(warm, "statmux")
    compile_s = time.perf_counter() - t0
    figures: dict[str, Any] = {"jit_warmup_s": round(compile_s, 3), "cases": {}}
    table = Table(title="Placement search (warm), 1 h Gamma trace, 100 req/s, CV 4, SLO 5x")
    for col in (
        "case",
        "requests",
        "statmux s",
        "cpu s",
        "statmux att.",
        "target",
        "alpaserve s",
        "alpaserve att.",
    ):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name, case in CASES.items():
        ms = modelset(case["profiles"], gpus=case["gpus"], rate=100.0, cv=4.0, slo_scale=5.0)
        t = time.perf_counter()
        cpu = time.process_time()
        problem = build_problem(ms.spec)
        ours = run_policy(problem, "statmux")
        ours_s = time.perf_counter() - t
        ours_cpu = time.process_time() - cpu
        row: dict[str, Any] = {
            "requests": ours.sim.n_requests,
            "search_sample_requests": len(problem.workload.arrivals),
            "statmux_seconds": round(ours_s, 3),
            "statmux_cpu_seconds": round(ours_cpu, 3),
            "statmux_attainment": round(ours.attainment, 4),
            "statmux_placement": ours.result.placement.describe(),
            "target_seconds": case["target_s"],
            "alpaserve_published_seconds": case["alpaserve_published_s"],
        }
        if with_alpaserve:
            t = time.perf_counter()
            theirs = run_policy(problem, "alpaserve")
            row["alpaserve_seconds"] = round(time.perf_counter() - t, 3)
            row["alpaserve_attainment"] = round(theirs.attainment, 4)
            row["alpaserve_placement"] = theirs.result.placement.describe()
        figures["cases"][name] = row
        table.add_row(
            name,
            str(row["requests"]),
            f"{ours_s:.2f}",
            f"{ours_cpu:.2f}",
            f"{100 * ours.attainment:.2f} %",
            f"≤ {case['target_s']} s",
            f"{row.get('alpaserve_seconds', float('nan')):.2f}",
            f"{100 * row.get('alpaserve_attainment', float('nan')):.2f} %",
        )
    if not as_json:
        console.print(table)
        console.print(f"simulator JIT warm-up (first call only): {compile_s:.2f} s")
        console.print("seconds include building the workload; cpu s is the process CPU time")
    return figures
