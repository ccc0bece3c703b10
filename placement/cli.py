"""The placement subcommands: plan, simulate, experiment, bench.

User mistakes exit with code 2 and one clear message (statmux/cli.py). This module is
imported on every `statmux` start: the placement engine (numba), pydantic and rich are
imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from statmux.commands import Commands, UsageError, unwritable
from statmux.placement.policy_registry import BASELINES, POLICY_NAMES

if TYPE_CHECKING:
    from rich.console import Console

    from statmux.placement.plan import IncumbentInfo, Plan
    from statmux.placement.simulator import SimResult
    from statmux.placement.spec import ModelSet

__all__ = ["UsageError", "register"]


def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    return Console(), Console(stderr=True)


def _load_modelset(path: str) -> ModelSet:
    from statmux.placement.spec import load_modelset

    return load_modelset(path)


@contextmanager
def progress_status(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr that shows the latest search step once work takes a while."""
    _, err = _consoles()
    if not enabled:
        yield lambda _message: None
        return
    if not err.is_terminal:
        start = time.perf_counter()
        last = [start]

        def log(message: str) -> None:
            now = time.perf_counter()
            if now - last[0] >= 2.0:  # non-interactive: a line every couple of seconds
                err.print(f"[dim]… {now - start:5.1f}s {message}[/dim]")
                last[0] = now

        yield log
        return
    with err.status("searching…") as status:

        def update(message: str) -> None:
            status.update(message)

        yield update


def _print_plan(plan: Plan) -> None:
    from rich.table import Table

    out, _ = _consoles()
    t = Table(title=f"Plan for {plan.model_set} · policy {plan.policy} · {plan.search.placement}")
    for col in ("group", "GPUs", "pp", "tp", "latency", "models", "memory/GPU"):
        t.add_column(col, justify="left" if col in ("models", "latency") else "right")
    for g in plan.groups:
        t.add_row(
            g.name,
            str(g.gpus),
            str(g.pp),
            str(g.tp),
            g.latency_source,
            ", ".join(m.name for m in g.models),
            f"{g.memory_per_gpu_bytes / 2**30:.2f} GiB",
        )
    out.print(t)
    if plan.idle_gpus:
        out.print(f"{plan.idle_gpus} of {plan.cluster.gpus} GPUs idle: no model gains from them")
    incumbent = plan.search.incumbent
    if incumbent is not None and incumbent.outcome != "ignored":  # ignored: a warning
        out.print(_incumbent_line(incumbent, plan.attainment), highlight=False)
    p = plan.predicted
    rows = [(plan.policy + " (chosen)", p.attainment)]
    rows += sorted(p.baselines.items(), key=lambda kv: -kv[1])
    s = Table(title="Predicted SLO attainment")
    s.add_column("policy")
    s.add_column("attainment", justify="right")
    for name, att in rows:
        s.add_row(name, f"{100 * att:.2f} %")
    out.print(s)
    out.print(
        f"requests {p.requests}, goodput {p.goodput:.2f} req/s, latency p50 "
        f"{1000 * p.latency.p50:.1f} ms p99 {1000 * p.latency.p99:.1f} ms; search "
        f"{plan.search.seconds:.2f} s with {plan.search.simulations} simulations"
    )


def _incumbent_line(incumbent: IncumbentInfo, attainment: float) -> str:
    scored = f"{100 * (incumbent.attainment or 0.0):.2f} %"
    why = f" ({incumbent.reason})" if incumbent.reason else ""
    if incumbent.outcome == "kept":
        # the reason says by how much a new plan would have gained, when one scored higher
        return f"previous plan kept: it scores {scored}{why or ', no candidate scores higher'}"
    if incumbent.outcome == "improved":
        return (
            f"previous plan improved by a local search from it: it scores {scored}, this plan "
            f"{100 * attainment:.2f} %{why}"
        )
    return f"previous plan replaced: it scores {scored}, this plan {100 * attainment:.2f} %{why}"


def _read_previous(path: str) -> Plan:
    from statmux.placement.plan import Plan, PlanError

    try:
        return Plan.read(path)
    except PlanError as e:
        raise UsageError(f"--previous: {e}") from None


def _print_sim(result: SimResult) -> None:
    from rich.table import Table

    from statmux.placement.planner import latency_percentiles

    out, _ = _consoles()
    t = Table(title="Per-model results")
    for col in ("model", "requests", "attainment"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for i, (m, att) in enumerate(result.per_model_attainment.items()):
        t.add_row(m, str(int(result.requests[i])), f"{100 * att:.2f} %")
    out.print(t)
    lat = latency_percentiles(result)
    out.print(
        f"SLO attainment {100 * result.attainment:.2f} % of {result.n_requests} requests; "
        f"rejected {result.n_rejected}; goodput {result.goodput:.2f} req/s; latency "
        + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in lat.items())
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from statmux.placement.planner import plan_modelset

    out, _ = _consoles()
    ms = _load_modelset(args.modelset)
    policy = args.policy or ms.spec.placement.policy
    baselines = (
        () if args.no_baselines else BASELINES + (("statmux",) if policy != "statmux" else ())
    )
    target = args.target_attainment
    if target is not None and not 0 < target <= 1:
        raise UsageError(f"--target-attainment must be in (0, 1], got {target:g}")
    if target is not None and policy != "statmux":
        raise UsageError(_statmux_only("--target-attainment", args.policy, policy))
    if args.previous and target is not None:
        raise UsageError(
            "--previous and --target-attainment: give one (a capacity search carries each "
            "GPU count's plan to the next itself)"
        )
    for path, flag in ((args.output, "-o"), (args.plot, "--plot")):
        if path and (why := unwritable(path, flag)):
            raise UsageError(why)
    if args.sweep_gpus is not None:
        if target is not None or args.previous:
            raise UsageError(
                "--sweep-gpus plans every count itself, each from the smaller count's plan: "
                "drop --previous and --target-attainment"
            )
        if policy != "statmux":
            raise UsageError(_statmux_only("--sweep-gpus", args.policy, policy))
        return _sweep(args, ms, _parse_counts(args.sweep_gpus), baselines)
    if args.plot:
        raise UsageError("--plot goes with --sweep-gpus")
    previous = _read_previous(args.previous) if args.previous else None
    with progress_status(not args.quiet) as progress:
        if target is None:
            plan = plan_modelset(ms, policy, baselines, progress, previous)
        else:
            plan = _capacity_plan(ms, target, progress, baselines)
            out.print(
                f"fewest GPUs reaching {100 * target:.2f} % SLO attainment: "
                f"{plan.cluster.gpus} (predicted {100 * plan.attainment:.2f} %)"
            )
    if args.output:
        plan.write(args.output)
    if args.json:
        print(plan.to_json())
    else:
        _print_plan(plan)
        if args.output:
            out.print(f"wrote {args.output}")
    _, err = _consoles()
    for warning in plan.warnings:
        err.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False)
    if plan.search.incumbent is not None and plan.search.incumbent.outcome == "ignored":
        reason = plan.search.incumbent.reason
        err.print(
            f"[bold yellow]warning:[/bold yellow] --previous ignored: {reason}", highlight=False
        )
    if plan.unplaced:
        message = (
            f"{len(plan.unplaced)} of {len(ms.spec.models)} models get no replica and fail "
            f"every request: {', '.join(plan.unplaced)} ({plan.unplaced_advice()})"
        )
        if args.strict:
            raise UsageError(message)
        err.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)
    return 0


def _statmux_only(flag: str, given: str | None, policy: str) -> str:
    if given is not None:
        return f"{flag} plans with the statmux policy; drop --policy {given}"
    return (
        f"{flag} plans with the statmux policy; this ModelSet asks for {policy!r} "
        "(spec.placement.policy): add --policy statmux"
    )


def _parse_counts(text: str) -> list[int]:
    """FIRST:LAST or FIRST:LAST:STEP, inclusive, as --sweep-gpus takes them."""
    parts = text.split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or len(numbers) != len(parts):
        raise UsageError(f"--sweep-gpus: {text!r} is not FIRST:LAST or FIRST:LAST:STEP (e.g. 4:16)")
    first, last, step = (*numbers, 1) if len(numbers) == 2 else numbers
    if not 1 <= first <= last or step < 1:
        raise UsageError(
            f"--sweep-gpus: {text!r}: needs 1 <= FIRST <= LAST and STEP >= 1 (got FIRST "
            f"{first}, LAST {last}, STEP {step})"
        )
    counts = list(range(first, last + 1, step))
    if len(counts) > 256:
        raise UsageError(f"--sweep-gpus: {text!r} plans {len(counts)} counts; at most 256")
    return counts


def _sweep(
    args: argparse.Namespace, ms: ModelSet, counts: list[int], baselines: tuple[str, ...]
) -> int:
    """`statmux plan --sweep-gpus`: each count planned from the smaller count's plan (as
    `--previous` does), so the attainment never decreases; a table, --json, --plot PNG."""
    from rich.table import Table

    from statmux.placement.capacity import sweep

    out, _ = _consoles()
    name = ms.metadata.name
    with progress_status(not args.quiet) as progress:
        plans = [p.plan for p in sweep(ms.spec, counts, baselines, progress, name)]
    if args.output:
        plans[-1].write(args.output)
    if args.plot:
        from statmux.placement.sweep_plot import plot_sweep

        series: dict[str, list[float | None]] = {"statmux": [p.attainment for p in plans]}
        for b in baselines:
            series[b] = [p.predicted.baselines.get(b) for p in plans]
        gpus = [p.cluster.gpus for p in plans]
        plot_sweep(f"{name}: GPU sweep", gpus, series, args.plot)
    if args.json:
        print(json.dumps([_sweep_row(p) for p in plans], indent=2))
        return 0
    t = Table(title=f"GPU sweep of {name}: each count re-planned from the previous count's plan")
    for col in ("GPUs", "attainment", "best baseline", "previous plan", "placement"):
        t.add_column(col, justify="right" if col in ("GPUs", "attainment") else "left")
    for p in plans:
        best = max(p.predicted.baselines.items(), key=lambda kv: kv[1], default=None)
        info = p.search.incumbent
        t.add_row(
            str(p.cluster.gpus),
            f"{100 * p.attainment:.2f} %",
            "-" if best is None else f"{100 * best[1]:.2f} % {best[0]}",
            "-" if info is None else info.outcome,
            p.search.placement + (f" + {p.idle_gpus} idle" if p.idle_gpus else ""),
        )
    out.print(t)
    if args.output:
        out.print(f"wrote the plan for {plans[-1].cluster.gpus} GPUs to {args.output}")
    if args.plot:
        out.print(f"wrote {args.plot}")
    return 0


def _sweep_row(plan: Plan) -> dict[str, object]:
    info = plan.search.incumbent
    return {
        "gpus": plan.cluster.gpus,
        "attainment": plan.attainment,
        "placement": plan.search.placement,
        "idleGpus": plan.idle_gpus,
        "previousPlan": None if info is None else info.outcome,
        "baselines": dict(plan.predicted.baselines),
        "unplaced": list(plan.unplaced),
    }


def _capacity_plan(
    ms: ModelSet, target: float, progress: Callable[[str], None], baselines: tuple[str, ...]
) -> Plan:
    from statmux.placement.capacity import fewest_gpus

    hit = fewest_gpus(ms.spec, target, progress, baselines, ms.metadata.name)
    # the chain of smaller counts found it: not a previous plan of the user's to report on
    return hit.plan.model_copy(
        update={"search": hit.plan.search.model_copy(update={"incumbent": None})}
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from statmux.placement.plan import Plan, PlanError
    from statmux.placement.planner import evaluate_plan

    ms = _load_modelset(args.modelset)
    try:
        plan = Plan.read(args.plan)
    except PlanError as e:
        raise UsageError(str(e)) from None
    result = evaluate_plan(ms.spec, plan)
    if args.json:
        print(json.dumps(result.summary(), indent=2, default=float))
    else:
        _print_sim(result)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from statmux.placement.experiments import EXPERIMENTS, run_experiment

    if args.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {args.name!r}; allowed: {', '.join(EXPERIMENTS)}")
    out, _ = _consoles()
    with progress_status(True) as progress:
        files = run_experiment(args.name, Path(args.out), quick=args.quick, progress=progress)
    for f in files:
        out.print(f"wrote {f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "simulator":
        from statmux.placement.bench_simulator import bench_simulator

        figures = bench_simulator(as_json=args.json)
    else:
        from statmux.placement.bench_search import bench_search

        figures = bench_search(as_json=args.json)
    if args.json:
        print(json.dumps(figures))
    return 0


def _plan_schema(argv: list[str]) -> int:
    from statmux.placement.plan_schema import plan_schema_main

    return plan_schema_main(argv)


def _spec_errors(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A ModelSet mistake found anywhere in the handler is a usage error (exit 2)."""

    def run(args: argparse.Namespace) -> int:
        from statmux.placement.spec import SpecError

        try:
            return handler(args)
        except SpecError as e:
            raise UsageError(str(e)) from None

    return run


def register(commands: Commands) -> None:
    plan = commands.add(
        "plan", _spec_errors(cmd_plan), help="search a placement for a ModelSet and write the Plan"
    )
    plan.add_argument("modelset")
    plan.add_argument("--policy", choices=POLICY_NAMES)
    plan.add_argument("-o", "--output", help="write the Plan JSON here")
    plan.add_argument("--json", action="store_true", help="print the Plan JSON")
    plan.add_argument("--no-baselines", action="store_true", help=f"skip {'/'.join(BASELINES)}")
    plan.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    plan.add_argument(
        "--target-attainment",
        type=float,
        metavar="X",
        help="find the fewest GPUs whose plan reaches SLO attainment X (e.g. 0.99) and "
        "print that plan (cluster.gpus is ignored)",
    )
    plan.add_argument(
        "--previous",
        metavar="PLAN",
        help="the plan in use (JSON, as -o writes it): kept unless a candidate scores higher, "
        "so more GPUs, memory or a looser SLO never lower the attainment; ignored (with the "
        "reason) when it no longer fits",
    )
    plan.add_argument(
        "--sweep-gpus",
        metavar="FIRST:LAST[:STEP]",
        help="plan every GPU count from FIRST to LAST, each as a re-plan of the smaller "
        "count's plan, so the attainment never decreases; prints a table (-o writes the "
        "last count's plan; cluster.gpus is ignored)",
    )
    plan.add_argument("--plot", metavar="PNG", help="with --sweep-gpus: write the curve here")
    plan.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when a model gets no replica (default: a warning)",
    )

    sim = commands.add(
        "simulate",
        _spec_errors(cmd_simulate),
        help="simulate a Plan against a ModelSet's workload",
    )
    sim.add_argument("modelset")
    sim.add_argument("--plan", required=True)
    sim.add_argument("--json", action="store_true")

    exp = commands.add(
        "experiment", _spec_errors(cmd_experiment), help="run an evaluation sweep, write CSV + PNG"
    )
    exp.add_argument("name")
    exp.add_argument("--out", default="docs/experiments")
    exp.add_argument("--quick", action="store_true", help="fewer points, shorter traces")

    bench = commands.add("bench", cmd_bench, help="print performance figures")
    bench.add_argument("what", choices=("simulator", "search"))
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")

    commands.add_entry(
        "plan-schema", _plan_schema, help="print, write or check the Plan's JSON Schema"
    )
