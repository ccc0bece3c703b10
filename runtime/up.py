"""`statmux up`: a whole ModelSet on this machine, behind one endpoint.

    statmux up MODELSET.yaml [--plan P] [--device auto|cpu|cuda] [--emulate-device]
               [--http-port 8000] [--grpc-port 8001] [--workdir DIR] [--load SECONDS]

1. validates the ModelSet and every model's weights (exit 2 naming the field, before any
   process starts);
2. plans it, or takes --plan;
3. starts every group's ranks and the router as local processes (runtime/local_cluster.py);
4. shows each group's progress and turns ready when every group and the router are;
5. prints the endpoint and examples, then serves until Ctrl-C / SIGTERM, or with --load
   replays that many seconds of the ModelSet's workload through the router, prints measured
   vs predicted SLO attainment, and shuts down.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from statmux.placement.plan import Plan, PlanError
from statmux.placement.spec import ModelSet, SpecError, load_modelset
from statmux.placement.workload import spec_duration
from statmux.runtime.local_cluster import ClusterError, ClusterOptions, LocalCluster, visible_gpus

# Piped output (make demo, CI logs) gets room for the report's table.
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


class UpError(Exception):
    """A user mistake found before anything starts (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux up",
        description="Serve a ModelSet on this machine: plan it, start every group's ranks and "
        "the router as local processes, print the endpoint; Ctrl-C stops everything.",
    )
    p.add_argument("modelset", help="the ModelSet YAML")
    p.add_argument("--plan", help="serve this Plan instead of planning the ModelSet")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cuda: one process per GPU over NCCL; cpu: gloo processes; auto (default): cuda "
        "when this machine has GPUs",
    )
    p.add_argument(
        "--emulate-device",
        action="store_true",
        help="every stage takes its profiled time (see `statmux runtime --emulate-device`)",
    )
    p.add_argument("--http-port", type=int, default=8000, help="the router's REST port")
    p.add_argument("--grpc-port", type=int, default=8001, help="the router's gRPC port")
    p.add_argument("--workdir", help="where the plan and the logs go (default: a new temp dir)")
    p.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for every group"
    )
    p.add_argument(
        "--load",
        type=float,
        metavar="SECONDS",
        help="replay this many seconds of the ModelSet's workload through the router, print "
        "measured vs predicted attainment, then shut down",
    )
    p.add_argument("--json", action="store_true", help="with --load: print the report as JSON")
    p.add_argument("--no-router", action="store_true", help="start the groups only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


# ----------------------------------------------------------------------------- checks
def check_plan(ms: ModelSet, plan: Plan) -> None:
    """Everything the ranks would refuse, found before any process starts."""
    from statmux.runtime.presets import ModelConfigError, resolve_config

    known = {m.name for m in ms.spec.models}
    for g in plan.groups:
        if not g.models:
            raise UpError(f"plan group {g.name!r} hosts no model; the runtime refuses it")
        for m in g.models:
            if m.name not in known:
                raise UpError(
                    f"plan group {g.name!r} serves {m.name!r}, which the ModelSet does not define"
                )
            try:
                resolve_config(m.weights, f"spec.models[{m.name}].weights")
            except ModelConfigError as e:
                raise UpError(str(e)) from None


def get_plan(ms: ModelSet, plan_path: str | None, quiet: bool) -> Plan:
    if plan_path is not None:
        try:
            return Plan.read(plan_path)
        except PlanError as e:
            raise UpError(str(e)) from None
    from statmux.placement.planner import plan_modelset

    with err.status("planning…", spinner="dots") if not quiet else _nothing():
        return plan_modelset(ms)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def choose_device(requested: str) -> str:
    if requested != "auto":
        return requested
    return "cuda" if visible_gpus() > 0 else "cpu"


# ----------------------------------------------------------------------------- display
def wait_with_progress(cluster: LocalCluster, timeout_s: float, quiet: bool) -> None:
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("{task.description}"),
        TextColumn("[dim]{task.fields[state]}[/dim]"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    tasks: dict[str, Any] = {}
    with progress:
        for g in cluster.groups:
            names = ", ".join(m.name for m in g.plan.models)
            tasks[g.name] = progress.add_task(
                f"{g.name} pp{g.plan.pp}×tp{g.plan.tp} ({len(g.ranks)} ranks): {names}",
                total=1,
                state="loading",
            )
        if cluster.router is not None:
            tasks["router"] = progress.add_task("router", total=1, state="waiting for groups")

        def update(c: LocalCluster) -> None:
            for g in c.groups:
                done = 1 if g.state == "ready" else 0
                progress.update(tasks[g.name], completed=done, state=g.state)
            if c.router is not None:
                ok = all(g.state == "ready" for g in c.groups) and c.router_ready()
                progress.update(tasks["router"], completed=int(ok), state="ready" if ok else "")

        cluster.wait_ready(timeout_s, update)


def print_endpoint(cluster: LocalCluster, plan: Plan, seconds: float, modelset: str) -> None:
    first = plan.groups[0].models[0]
    ids = "[[101, 7, 42, 102]]"
    if cluster.router is None:
        for g in cluster.groups:
            out.print(f"group {g.name}: http://{g.url.removeprefix('http://')}", highlight=False)
        return
    host = cluster.endpoint
    out.print(
        f"[bold green]ready[/bold green] in {seconds:.1f} s: {len(plan.models)} models on "
        f"{len(cluster.groups)} groups ({sum(len(g.ranks) for g in cluster.groups)} ranks) "
        f"behind http://{host} (gRPC {cluster.grpc_endpoint}); logs and plan in "
        f"{cluster.workdir}",
        highlight=False,
    )
    curl = (
        f"curl -s -X POST http://{host}/v2/models/{first.name}/infer -d "
        f'\'{{"inputs":[{{"name":"input_ids","datatype":"INT64","shape":[1,4],'
        f'"data":[101,7,42,102]}}]}}\''
    )
    py = (
        "python - <<'EOF'\n"
        "import numpy as np, tritonclient.http as httpclient\n"
        f'client = httpclient.InferenceServerClient("{host}")\n'
        f"ids = np.array({ids}, dtype=np.int64)\n"
        'inp = httpclient.InferInput("input_ids", list(ids.shape), "INT64")\n'
        "inp.set_data_from_numpy(ids)\n"
        f'result = client.infer("{first.name}", [inp])\n'
        "print(result.get_response()['outputs'][0]['name'], "
        "result.as_numpy(result.get_response()['outputs'][0]['name']).shape)\n"
        "EOF"
    )
    out.print("try:\n  " + curl, highlight=False, markup=False, soft_wrap=True)
    out.print(py, highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"load: statmux load {host} --modelset {modelset} --plan {cluster.plan_path} --duration 30",
        highlight=False,
        markup=False,
    )
    out.print("Ctrl-C stops every process.")


# ----------------------------------------------------------------------------- main
def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        return _up(args)
    except (SpecError, UpError, ClusterError) as e:
        err.print("[bold red]statmux up: error:[/bold red] ", end="")
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        return 2


def _up(args: argparse.Namespace) -> int:
    ms = load_modelset(args.modelset)  # SpecError: exit 2 before anything starts
    if args.load is not None and args.load <= 0:
        raise UpError(f"--load must be a positive number of seconds, got {args.load:g}")
    if args.load is not None and args.no_router:
        raise UpError("--load sends through the router; drop --no-router")
    if args.load is not None and args.load > (full := spec_duration(ms.spec)):
        raise UpError(
            f"--load {args.load:g} s is longer than the ModelSet's workload "
            f"(spec.workload.durationSeconds: {full:g} s)"
        )
    plan = get_plan(ms, args.plan, args.quiet)
    check_plan(ms, plan)
    prepared = None
    if args.load is not None:
        from statmux.runtime.load_cli import LoadUsageError, prepare

        try:
            prepared = prepare(ms, plan, args.load)
        except LoadUsageError as e:
            raise UpError(str(e)) from None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"statmux-up-{ms.metadata.name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan_path = workdir / "plan.json"
    plan.write(plan_path)
    options = ClusterOptions(
        device=choose_device(args.device),
        emulate_device=args.emulate_device,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        with_router=not args.no_router,
    )

    def event(message: str) -> None:
        err.print(f"[bold red]{message}[/bold red]", highlight=False)

    cluster = LocalCluster(plan, plan_path, workdir, options, on_event=event)
    cluster.check()  # ports and GPUs: exit 2 before any process starts
    if not args.no_router:
        try:
            import statmux.runtime.router  # noqa: F401
        except ImportError as e:
            raise UpError(f"the router is not available in this installation: {e}") from None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.monotonic()
    code = 0
    try:
        cluster.start()
        wait_with_progress(cluster, args.ready_timeout, args.quiet)
        print_endpoint(cluster, plan, time.monotonic() - start, args.modelset)
        if prepared is not None:
            from statmux.runtime.load_cli import print_report, run_load

            doc = run_load(cluster.endpoint, prepared, quiet=args.quiet)
            if args.json:
                import json

                print(json.dumps(doc, indent=2))
            else:
                print_report(doc, out)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        err.print("stopping…")
    except ClusterError as e:
        err.print(f"[bold red]statmux up: {e}[/bold red]", highlight=False)
        code = 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    err.print(f"stopped every process (logs in {workdir})", highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(up_main(sys.argv[1:]))
