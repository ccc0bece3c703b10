"""`statmux operator`: run the kopf operator (entry point `operator_main`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from statmux.operator.config import ConfigError, OperatorConfig

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statmux operator", description="Run the statmux ModelSet operator (kopf)."
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: $STATMUX_WATCH_NAMESPACES, "
        "comma-separated, else all namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    p.add_argument(
        "--liveness",
        default=os.environ.get("STATMUX_LIVENESS", DEFAULT_LIVENESS),
        help=f"kopf liveness endpoint URL, or 'off' (default {DEFAULT_LIVENESS})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("STATMUX_METRICS_PORT", "0") or 0),
        help="serve Prometheus metrics on this port (0: off)",
    )
    p.add_argument(
        "--peering",
        default=None,
        help="a KopfPeering name for several replicas (default: standalone, no peering)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def watched_namespaces(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """The namespaces to watch; an empty list means all namespaces."""
    if args.all_namespaces:
        return []
    if args.namespace:
        return list(args.namespace)
    return [n.strip() for n in env.get("STATMUX_WATCH_NAMESPACES", "").split(",") if n.strip()]


def operator_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        OperatorConfig.from_env()  # fail fast with a clear message before kopf starts
    except ConfigError as err:
        print(f"statmux operator: {err}", file=sys.stderr)
        return 2
    namespaces = watched_namespaces(args, dict(os.environ))

    import kopf

    import statmux.operator.handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler and timer success at INFO; keep its warnings only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    liveness = None if args.liveness in ("", "off", "none") else args.liveness
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=args.peering is None,
                peering_name=args.peering,
                liveness_endpoint=liveness,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(operator_main())
