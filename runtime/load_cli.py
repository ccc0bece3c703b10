"""`statmux load`: replay a ModelSet's workload against an endpoint; measured vs predicted.

    statmux load ENDPOINT --modelset F [--duration S] [--plan P] [--protocol http|grpc]
                 [--json] [-q]

ENDPOINT is host:port of any Open Inference Protocol server: the router of `statmux up`, a
single group's leader, Triton or KServe. The prediction is the simulator's, for the same
Plan and the very same arrivals (the ModelSet's seed, cut to --duration). Without --plan the
ModelSet is planned here, as `statmux up` does without --plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from statmux.placement.plan import Plan, PlanError
from statmux.placement.simulator import SimResult, Simulator
from statmux.placement.spec import ModelSet, SpecError, load_modelset
from statmux.placement.workload import Workload, spec_duration, workload_from_spec
from statmux.runtime.loadgen import DEFAULT_SEQUENCE_LENGTH, EndpointError, LoadResult, replay


class LoadUsageError(Exception):
    """A user mistake (exit 2)."""


@dataclass
class Replay:
    """What to send and what the simulator predicts for it."""

    workload: Workload
    slo: dict[str, float]
    predicted: SimResult


def prepare(ms: ModelSet, plan: Plan, duration: float | None) -> Replay:
    """The ModelSet's arrivals cut to `duration`, and the simulator's result on them."""
    from statmux.placement.planner import build_problem

    spec = ms.spec
    full = spec_duration(spec)
    if duration is not None and duration > full:
        raise LoadUsageError(
            f"--duration {duration:g} s is longer than the ModelSet's workload "
            f"(spec.workload.durationSeconds: {full:g} s); the arrivals are the simulator's, "
            "so raise durationSeconds in the ModelSet instead"
        )
    unknown = [m for m in plan.models if m not in {x.name for x in spec.models}]
    if unknown:
        raise LoadUsageError(
            f"the plan serves {', '.join(unknown)}, which the ModelSet does not define"
        )
    problem = build_problem(spec)
    workload = workload_from_spec(spec)
    if duration is not None:
        workload = workload.slice(workload.start, workload.start + duration)
    sim = Simulator(problem.profiles, workload, problem.slo, spec.max_batch_size)
    return Replay(workload, dict(problem.slo), sim.run(plan.placement()))


def report(result: LoadResult, predicted: SimResult) -> dict[str, Any]:
    """Measured next to predicted, per model and overall (the --json document)."""
    per_pred = predicted.per_model_attainment
    models: dict[str, Any] = {}
    for name, m in result.models.items():
        if m.sent == 0:
            continue
        models[name] = {
            "sent": m.sent,
            "ok": m.ok,
            "withinSlo": m.good,
            "rejected": m.rejected,
            "errors": m.errors,
            "sloSeconds": m.slo_seconds,
            "attainment": m.attainment,
            "predictedAttainment": per_pred.get(name, float("nan")),
            "goodput": m.good / result.duration if result.duration else 0.0,
            "latency": {f"p{q}": m.percentile(q) for q in (50, 90, 99)},
            "firstError": m.first_error or None,
            "firstRejection": m.first_rejection or None,
        }
    lat = sorted(result.latencies())

    def pct(q: float) -> float:
        if not lat:
            return float("nan")
        return float(lat[min(len(lat) - 1, math.ceil(q / 100 * len(lat)) - 1)])

    return {
        "durationSeconds": result.duration,
        "wallSeconds": result.wall_seconds,
        "maxSendLagSeconds": result.max_send_lag,
        "perModel": models,
        "overall": {
            "sent": result.sent,
            "ok": sum(m.ok for m in result.models.values()),
            "withinSlo": result.good,
            "rejected": sum(m.rejected for m in result.models.values()),
            "errors": sum(m.errors for m in result.models.values()),
            "attainment": result.attainment,
            "goodput": result.goodput,
            "latency": {"p50": pct(50), "p90": pct(90), "p99": pct(99)},
        },
        "predicted": {
            "attainment": predicted.attainment,
            "requests": predicted.n_requests,
            "rejected": predicted.n_rejected + predicted.n_dropped,
            "goodput": predicted.goodput,
            "latency": {
                "p50": predicted.latency_p50,
                "p90": predicted.latency_p90,
                "p99": predicted.latency_p99,
            },
        },
        "gapPoints": 100 * (result.attainment - predicted.attainment),
    }


def _report_cells(name: str, row: dict[str, Any], predicted: float) -> list[str]:
    """One table row: counts, measured and predicted attainment, goodput, latencies."""
    latency = row["latency"]
    return [
        name,
        *(str(row[k]) for k in ("sent", "ok", "rejected", "errors")),
        f"{100 * row['attainment']:.2f} %",
        f"{100 * predicted:.2f} %",
        f"{row['goodput']:.2f}",
        *(_ms(latency[q]) for q in ("p50", "p90", "p99")),
    ]


def _ms(x: float) -> str:
    return "-" if x != x else f"{1000 * x:.1f}"


def print_report(doc: dict[str, Any], console: Console) -> None:
    t = Table(title=f"Measured vs predicted over {doc['durationSeconds']:g} s of arrivals")
    for col in (
        "model",
        "sent",
        "ok",
        "rejected",
        "errors",
        "attainment",
        "predicted",
        "goodput/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
    ):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in doc["perModel"].items():
        t.add_row(*_report_cells(name, m, m["predictedAttainment"]))
    o, p = doc["overall"], doc["predicted"]
    t.add_row(*_report_cells("all", o, p["attainment"]), style="bold")
    console.print(t)
    console.print(
        f"SLO attainment: measured {100 * o['attainment']:.2f} %, predicted "
        f"{100 * p['attainment']:.2f} % (gap {doc['gapPoints']:+.2f} points); predicted "
        f"latency p50 {_ms(p['latency']['p50'])} ms p99 {_ms(p['latency']['p99'])} ms; "
        f"generator lag max {1000 * doc['maxSendLagSeconds']:.1f} ms"
    )
    for name, m in doc["perModel"].items():
        if m["firstRejection"]:
            console.print(f"{name}: first rejection: {m['firstRejection']}", markup=False)
        if m["firstError"]:
            console.print(f"{name}: first error: {m['firstError']}", markup=False, style="yellow")


def run_load(
    endpoint: str,
    prepared: Replay,
    protocol: str = "http",
    seq_len: int = DEFAULT_SEQUENCE_LENGTH,
    quiet: bool = False,
) -> dict[str, Any]:
    """Replay and return the report document (shows a progress bar on stderr)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task(f"load → {endpoint}", total=len(prepared.workload))

        def tick(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        result = asyncio.run(
            replay(endpoint, prepared.workload, prepared.slo, protocol, seq_len, tick)
        )
    return report(result, prepared.predicted)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux load",
        description="Replay a ModelSet's workload open-loop against an Open Inference Protocol "
        "endpoint and print measured SLO attainment next to the simulator's prediction.",
    )
    p.add_argument("endpoint", help="host:port (REST, or gRPC with --protocol grpc)")
    p.add_argument("--modelset", required=True, help="the ModelSet whose workload to replay")
    p.add_argument("--plan", help="the Plan being served (default: plan the ModelSet here)")
    p.add_argument(
        "--duration", type=_positive, help="seconds of arrivals to replay (default: all)"
    )
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--sequence-length", type=int, default=DEFAULT_SEQUENCE_LENGTH)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def load_plan(ms: ModelSet, plan_path: str | None, quiet: bool = True) -> Plan:
    if plan_path is not None:
        return Plan.read(plan_path)
    from statmux.placement.planner import plan_modelset

    return plan_modelset(ms)


def load_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    err = Console(stderr=True)
    try:
        ms = load_modelset(args.modelset)
        plan = load_plan(ms, args.plan)
        prepared = prepare(ms, plan, args.duration)
        doc = run_load(args.endpoint, prepared, args.protocol, args.sequence_length, args.quiet)
    except (SpecError, PlanError, LoadUsageError) as e:
        err.print(f"statmux load: error: {e}", markup=False, highlight=False)
        return 2
    except EndpointError as e:
        err.print(f"statmux load: error: {e}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc, Console(width=None if sys.stdout.isatty() else 150))
    return 0


if __name__ == "__main__":
    sys.exit(load_main(sys.argv[1:]))
