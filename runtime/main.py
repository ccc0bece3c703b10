"""`statmux runtime`: run one rank of a Plan's group; rank 0 also serves OIP REST + gRPC.

    statmux runtime --plan plan.json --group g0 [--http-port 8000] [--grpc-port 8001]
                    [--device cpu|cuda] [--memory-budget BYTES] [--max-request-bytes N]
                    [--emulate-device]

Every rank runs the same command; where a rank sits in its group comes from the environment
only (torch's MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE or LeaderWorkerSet's LWS_* variables),
so local processes and Kubernetes pods launch it the same way. A group of one rank (pp1×tp1)
needs no variables at all. The group's models and (pp, tp) come from the Plan. Rank 0 serves
/v2 and /metrics on --http-port and gRPC on --grpc-port until SIGTERM/SIGINT; the other ranks
run the worker loop and exit when the leader shuts the group down.

User mistakes (missing plan, unknown group, bad environment, bad flags) exit with status 2
and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from statmux.contract import (
    ENV_DEVICE,
    ENV_LWS_GROUP_SIZE,
    ENV_LWS_LEADER_ADDRESS,
    ENV_MASTER_ADDR,
    ENV_RANK,
    ENV_WORLD_SIZE,
    GRPC_PORT,
    HTTP_PORT,
)
from statmux.runtime.cpu_threads import apply_intra_op_threads
from statmux.runtime.launcher import child_env, launch, ranks_to_launch
from statmux.runtime.server_limits import DEFAULT_MAX_REQUEST_BYTES, ServerLimits

# The Plan (pydantic), the front end and the servers load once the flags are parsed, so that
# `statmux runtime --help` stays quick (benchmarks/cli_startup.py).
if TYPE_CHECKING:
    from statmux.placement.plan import PlanGroup
    from statmux.runtime.frontend import FrontEnd

log = logging.getLogger("statmux.runtime")

DEVICES = ("cpu", "cuda")  # what --device and $STATMUX_DEVICE may say

# Any of these means the process is one rank of a larger group (see runtime/dist_env.py).
RENDEZVOUS_VARS = (
    ENV_MASTER_ADDR,
    ENV_RANK,
    ENV_WORLD_SIZE,
    ENV_LWS_LEADER_ADDRESS,
    ENV_LWS_GROUP_SIZE,
)

DEFAULT_DRAIN_S = 30.0
EXIT_GROUP_FAILED = 3  # a rank died or hung: every rank exits so the group restarts together


class UsageError(Exception):
    """A mistake in the command line, the Plan or the environment (exit status 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux runtime",
        description="Run one rank of a Plan's serving group (rank 0 serves the Open "
        "Inference Protocol over REST and gRPC, and Prometheus metrics on /metrics).",
    )
    p.add_argument("--plan", required=True, help="the Plan JSON (from `statmux plan`)")
    p.add_argument("--group", required=True, help="the name of this process's group, e.g. g0")
    p.add_argument("--host", default="0.0.0.0", help="address to serve on (default 0.0.0.0)")
    p.add_argument("--http-port", type=_port, default=HTTP_PORT, help="REST + /metrics port")
    p.add_argument("--grpc-port", type=_port, default=GRPC_PORT, help="gRPC port")
    p.add_argument("--no-grpc", action="store_true", help="serve REST only")
    p.add_argument(
        "--worker-health",
        action="store_true",
        help="in a pod without the group's leader, answer GET /v2/health/{live,ready} on "
        "--http-port from local rank 0, so one readinessProbe serves every pod of the group "
        "(set by the operator; see runtime/worker_health.py)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help=f"cpu (gloo) or cuda (NCCL); the {ENV_DEVICE} environment variable, when set "
        "(by a node's device plugin), overrides it",
    )
    p.add_argument(
        "--emulate-device",
        action="store_true",
        help="each stage's forward takes the Plan's profiled time (stageLatencySeconds): the "
        "real shard runs, then the rank sleeps for the rest; see runtime/emulation.py",
    )
    p.add_argument(
        "--memory-budget",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help="per-device bytes for resident weights; models beyond it are swapped",
    )
    p.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest accepted request body (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--rendezvous-timeout",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long a rank waits for the leader and its peers to join (default 600)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=_positive_float,
        default=3.0,
        metavar="SECONDS",
        help="a rank whose heartbeat stops this long is dead: the group fails and every rank "
        "exits so that the pod group restarts as a gang (default 3; readiness is already "
        "false after a third of it)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help="on SIGTERM: how long accepted requests may take to finish (readiness is false "
        f"and new requests get 503 meanwhile; default {DEFAULT_DRAIN_S:g})",
    )
    p.add_argument(
        "--head-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="a client must send a request's head within this, and a gRPC connection its "
        "HTTP/2 preface and settings (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="a client must send a request's body within this (default 30)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1024,
        help="open REST connections, and open gRPC connections, beyond this are closed at "
        "once (default 1024 each)",
    )
    p.add_argument(
        "--grpc-max-calls",
        type=_positive_int,
        default=1024,
        help="gRPC calls served at once; more get RESOURCE_EXHAUSTED (default 1024)",
    )
    p.add_argument(
        "--grpc-max-streams",
        type=_positive_int,
        default=256,
        help="HTTP/2 streams one gRPC connection may open at once (default 256)",
    )
    p.add_argument(
        "--grpc-max-connection-age",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="a gRPC connection is closed after this (GOAWAY; its calls get --drain-timeout "
        "to finish; clients reconnect) (default 600)",
    )
    p.add_argument(
        "--switch-interval",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="the interpreter's thread switch interval (sys.setswitchinterval; Python's "
        "default 0.005): how long the event loop and the engine's threads may wait for "
        "each other's GIL",
    )
    p.add_argument(
        "--intra-op-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch intra-op threads of this rank (default: OMP_NUM_THREADS if set, else the "
        "CPUs this process may use (affinity, cgroup CPU limit) over the ranks in its pod)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def find_group(plan_path: str, name: str) -> PlanGroup:
    """This process's group, from the Plan file parsed once here (the runtime's boundary)."""
    from statmux.placement.plan import Plan, PlanError

    try:
        plan = Plan.read(plan_path)
    except PlanError as e:  # names the file and the field
        raise UsageError(str(e)) from None
    try:
        return plan.group(name)
    except PlanError:
        names = ", ".join(g.name for g in plan.groups)
        raise UsageError(
            f"plan {plan_path!r} has no group {name!r} (groups: {names or 'none'})"
        ) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_of(group: PlanGroup, env: Mapping[str, str]) -> Any:
    """This process's DistInfo; a one-rank group needs no rendezvous variables."""
    from statmux.runtime.dist_env import DistEnvError, DistInfo, dist_info_from_env

    if group.gpus == 1 and not any(k in env for k in RENDEZVOUS_VARS):
        return DistInfo(0, 1, "127.0.0.1", _free_port())
    try:
        return dist_info_from_env(env)
    except DistEnvError as e:
        raise UsageError(f"bad environment: {e}") from None


def device_of(flag: str, env: Mapping[str, str]) -> str:
    """The device to run on: $STATMUX_DEVICE when the node set it, else --device."""
    raw = env.get(ENV_DEVICE, "").strip()
    if not raw:
        return flag
    if raw not in DEVICES:
        raise UsageError(f"{ENV_DEVICE}={raw!r}; allowed: {', '.join(DEVICES)}")
    if raw != flag:
        log.warning(
            "device %s from %s (set by the node's device plugin) overrides --device %s",
            raw,
            ENV_DEVICE,
            flag,
        )
    return raw


def runtime_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))  # exits 2 with usage on bad flags
    try:
        local_ranks = ranks_to_launch(os.environ)
        if local_ranks > 1:  # a pod with several GPUs: one process per rank
            return launch(list(argv), local_ranks)
        if local_ranks == 1:
            os.environ.update(child_env(os.environ, 0, 1))
    except ValueError as e:
        print(f"statmux runtime: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _run(args)
    except UsageError as e:
        print(f"statmux runtime: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    group = find_group(args.plan, args.group)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    dist_info = rank_of(group, os.environ)
    threads = apply_intra_op_threads(args.intra_op_threads, os.environ)
    if threads is not None:
        log.info("intra-op threads: %d", threads)
    if args.worker_health and dist_info.rank != 0 and dist_info.local_rank == 0:
        from statmux.runtime.worker_health import serve_worker_health

        try:
            serve_worker_health(args.host, args.http_port, args.group, dist_info.rank)
        except OSError as e:
            raise UsageError(
                f"--worker-health: cannot listen on port {args.http_port}: {e}"
            ) from None
    from statmux.runtime.engine import EngineError
    from statmux.runtime.group import GroupSpecError, RendezvousError, start_group
    from statmux.runtime.presets import ModelConfigError

    args.device = device_of(args.device, os.environ)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    try:
        engine = start_group(
            group,
            dist_info,
            args.device,
            memory_budget_bytes=args.memory_budget,
            rendezvous_timeout_s=args.rendezvous_timeout,
            emulate_device=args.emulate_device,
            heartbeat_timeout_s=args.heartbeat_timeout,
        )
    except (GroupSpecError, ModelConfigError) as e:
        raise UsageError(f"plan group {args.group!r}: {e}") from None
    except RendezvousError as e:
        raise UsageError(str(e)) from None
    except EngineError as e:  # another rank could not build its shards
        raise UsageError(f"plan group {args.group!r}: {e}") from None
    if engine is None:  # a worker rank: the leader has shut the group down
        log.info("rank %d of group %s finished", dist_info.rank, args.group)
        return 0
    from statmux.runtime.frontend import FrontEnd

    failed: str | None = None
    try:
        front = FrontEnd(engine, max_in_flight=group.pp, max_request_bytes=args.max_request_bytes)
        failed = asyncio.run(_serve_until_signal(front, args))
    finally:
        start = time.monotonic()
        engine.shutdown()
        log.info("group shut down in %.2f s", time.monotonic() - start)
    if failed is not None:
        log.error(
            "exiting with status %d: %s; the other ranks exit too, so that the pod group "
            "restarts as a gang",
            EXIT_GROUP_FAILED,
            failed,
        )
        return EXIT_GROUP_FAILED
    log.info("exit 0")
    return 0


def limits_of(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        head_timeout_s=args.head_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
        drain_timeout_s=args.drain_timeout,
        grpc_max_calls=args.grpc_max_calls,
        grpc_max_streams=args.grpc_max_streams,
        grpc_max_connection_age_s=args.grpc_max_connection_age,
    )


async def _watch_group(front: FrontEnd, stop: asyncio.Event, interval_s: float = 0.2) -> str:
    """Set `stop` once the group fails; returns why."""
    while front.engine.healthy():
        await asyncio.sleep(interval_s)
    reason = getattr(front.engine, "failure", None) or "the group is unhealthy"
    stop.set()
    return str(reason)


async def _serve_until_signal(front: FrontEnd, args: argparse.Namespace) -> str | None:
    """Serve until SIGTERM/SIGINT (None) or until the group fails (the reason)."""
    from statmux.runtime.server_runner import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        log.info("%s: draining for up to %.1f s", name, args.drain_timeout)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    watcher = asyncio.create_task(_watch_group(front, stop))
    grpc_port = None if args.no_grpc else args.grpc_port
    log.info(
        "group %s serving %s on http %s:%d%s",
        args.group,
        ", ".join(sorted(front.scheduler.infos)),
        args.host,
        args.http_port,
        "" if grpc_port is None else f", grpc {args.host}:{grpc_port}",
    )
    try:
        await serve(front, args.host, args.http_port, grpc_port, stop, limits_of(args))
    except OSError as e:
        raise UsageError(f"cannot serve: {e}") from None
    finally:
        failed = watcher.result() if watcher.done() else None
        watcher.cancel()
    return failed


if __name__ == "__main__":
    sys.exit(runtime_main(sys.argv[1:]))
