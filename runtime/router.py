"""`statmux router`: one Open Inference Protocol endpoint for every model of a ModelSet.

    statmux router --plan plan.json --groups g0=http://127.0.0.1:8001,g1=http://127.0.0.1:8002
                   [--http-port 8000] [--grpc-port 8001]
    statmux router --plan /etc/statmux/plan.json --groups-file /etc/statmux/groups.json

Each request goes to the group expected to finish it soonest, or is refused at once when no
group can meet its SLO (docs/router.md). The Plan and the endpoints file are re-read every
--reload-interval: a changed file (including a Kubernetes ConfigMap update, which swaps a
symlink) is applied without a restart; a bad one is logged and the last good one stays.

User mistakes (bad flags, a missing or invalid Plan, groups without an address) exit with
status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from statmux.contract import GRPC_PORT, HTTP_PORT
from statmux.placement.plan import Plan, PlanError
from statmux.runtime.frontend import DEFAULT_MAX_REQUEST_BYTES
from statmux.runtime.lean_http import LeanServer
from statmux.runtime.main import _port, _positive_float, _positive_int
from statmux.runtime.router_config import (
    RouterConfig,
    RouterConfigError,
    build_config,
    parse_groups_flag,
    parse_groups_json,
)
from statmux.runtime.router_core import Router
from statmux.runtime.router_grpc import start_router_grpc
from statmux.runtime.router_http import start_router_http
from statmux.runtime.router_upstream import Upstreams
from statmux.runtime.server_limits import ServerLimits

log = logging.getLogger("statmux.router")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux router",
        description="Serve every model of a Plan from one Open Inference Protocol endpoint "
        "(REST + gRPC), dispatching each request to the group expected to finish it soonest.",
    )
    p.add_argument("--plan", required=True, help="the Plan JSON (re-read when it changes)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--groups",
        metavar="G=ADDR,...",
        help="where each plan group's leader serves REST, e.g. g0=http://127.0.0.1:8001,"
        "g1=127.0.0.1:8002 (every plan group needs one)",
    )
    where.add_argument(
        "--groups-file",
        metavar="FILE",
        help='a JSON object {"g0": "http://host:port", ...} (re-read when it changes; the '
        "operator's ConfigMap holds it next to the Plan)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to serve on (default 0.0.0.0)")
    p.add_argument("--http-port", type=_port, default=HTTP_PORT, help="REST + /metrics port")
    p.add_argument("--grpc-port", type=_port, default=GRPC_PORT, help="gRPC port")
    p.add_argument("--no-grpc", action="store_true", help="serve REST only")
    p.add_argument(
        "--ready-when",
        choices=("all", "any"),
        default="all",
        help="/v2/health/ready answers 200 when every model has a live group (all, like "
        "Triton's strict readiness) or when any group is live (any: what a Kubernetes "
        "readiness probe wants, so one dead group does not hide the others)",
    )
    p.add_argument(
        "--health-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often every group's /v2/health/ready is checked (default 1)",
    )
    p.add_argument(
        "--health-timeout",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="a health check unanswered this long counts as down (default 1)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="connecting to a group longer than this: try another replica (default 1)",
    )
    p.add_argument(
        "--hop-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="a group that has not answered a request after this long: 504 (default 60)",
    )
    p.add_argument(
        "--reload-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often the Plan and endpoints files are checked for changes (default 1)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long to wait for requests already sent to groups (default 30)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest accepted request body (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help='uvloop (C event loop: less CPU per request, docs/router.md "Overhead"), '
        "asyncio (the standard one), or auto: uvloop when installed (default)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


class ConfigSource:
    """The Plan file and the endpoints (inline, or a file), re-read when their bytes change."""

    def __init__(self, plan_path: str, groups: str | None, groups_file: str | None) -> None:
        self.plan_path = plan_path
        self.groups_file = groups_file
        self.inline = parse_groups_flag(groups) if groups is not None else None
        self._seen: tuple[bytes, bytes] | None = None

    def _read(self) -> tuple[bytes, bytes]:
        def read(path: str, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except FileNotFoundError:
                raise RouterConfigError(f"{what} {path!r} does not exist") from None
            except OSError as e:
                raise RouterConfigError(f"{what} {path!r}: cannot read: {e.strerror}") from None

        plan = read(self.plan_path, "plan file")
        groups = read(self.groups_file, "groups file") if self.groups_file else b""
        return plan, groups

    def load(self) -> RouterConfig:
        """The current configuration (raises RouterConfigError)."""
        plan_bytes, groups_bytes = self._read()
        self._seen = (plan_bytes, groups_bytes)
        try:
            plan = Plan.parse_json(plan_bytes, self.plan_path)
        except PlanError as e:
            raise RouterConfigError(str(e)) from None
        if self.inline is not None:
            return build_config(plan, self.inline, strict=True)
        assert self.groups_file is not None
        endpoints = parse_groups_json(groups_bytes.decode("utf-8", "replace"), self.groups_file)
        return build_config(plan, endpoints, strict=False)

    def changed(self) -> bool:
        try:
            return self._read() != self._seen
        except RouterConfigError:
            return False  # mid-swap or gone: keep serving what we have


async def watch_config(source: ConfigSource, router: Router, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if not source.changed():
            continue
        try:
            config = source.load()
        except RouterConfigError as e:
            router.metrics.plan_reloads.labels("error").inc()
            log.error("the changed plan is not usable; still serving the last good one: %s", e)
            continue
        router.metrics.plan_reloads.labels("ok").inc()
        log.info(
            "plan %s: %d groups, models %s",
            config.plan_hash,
            len(config.groups),
            ", ".join(config.models),
        )
        fresh = router.apply(config)
        await asyncio.gather(*(router.probe(st) for st in fresh))


async def serve_router(
    router: Router,
    source: ConfigSource | None,
    args: argparse.Namespace,
    stop: asyncio.Event,
) -> None:
    """Serve until `stop` is set; then refuse new requests, drain, and shut down."""
    http: LeanServer | None = None
    grpc_server: grpc.aio.Server | None = None
    loop = asyncio.get_running_loop()
    end = loop.time()  # when the drain must be over
    try:
        await router.probe_all()
        limits = ServerLimits(drain_timeout_s=args.drain_timeout)
        http = await start_router_http(
            router, args.host, args.http_port, args.max_request_bytes, limits
        )
        if not args.no_grpc:
            grpc_server, _ = await start_router_grpc(
                router, args.host, args.grpc_port, args.max_request_bytes
            )
        router.spawn(router.health_loop())
        if source is not None:
            router.spawn(watch_config(source, router, args.reload_interval))
        log.info(
            "router serving %s on http %s:%d%s; groups: %s",
            ", ".join(router.config.models),
            args.host,
            args.http_port,
            "" if args.no_grpc else f", grpc {args.host}:{args.grpc_port}",
            ", ".join(
                f"{s.group.name}={s.group.url} ({'up' if s.up else s.why_down})"
                for s in router.states.values()
            ),
        )
        await stop.wait()
        # Drain: readiness goes false, new requests get 503 and every REST answer says
        # Connection: close (clients go elsewhere); requests already sent to groups finish.
        end = loop.time() + args.drain_timeout
        router.close()
        http.drain()
        await router.drain(args.drain_timeout)
    finally:
        if grpc_server is not None:
            await grpc_server.stop(1.0)
        if http is not None:
            await http.close(max(1.0, end - loop.time()))
        await router.stop()


async def _main(args: argparse.Namespace, source: ConfigSource, config: RouterConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    router = Router(
        config,
        Upstreams(args.connect_timeout, args.hop_timeout),
        health_interval_s=args.health_interval,
        health_timeout_s=args.health_timeout,
        ready_when=args.ready_when,
    )
    await serve_router(router, source, args, stop)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run the router on (None: asyncio's default)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RouterConfigError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def router_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))  # exits 2 with usage on bad flags
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        factory = loop_factory(args.event_loop)
        source = ConfigSource(args.plan, args.groups, args.groups_file)
        config = source.load()
    except RouterConfigError as e:
        print(f"statmux router: error: {e}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_main(args, source, config))
    except OSError as e:
        print(f"statmux router: error: cannot serve: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(router_main(sys.argv[1:]))
