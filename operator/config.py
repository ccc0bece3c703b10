"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from statmux.contract import GRPC_PORT, HTTP_PORT, MASTER_PORT

GangMode = Literal["none", "kueue", "volcano"]
WorkloadMode = Literal["auto", "statefulset", "leaderworkerset"]

_GANG_MODES: tuple[GangMode, ...] = ("none", "kueue", "volcano")
_WORKLOAD_MODES: tuple[WorkloadMode, ...] = ("auto", "statefulset", "leaderworkerset")


class ConfigError(ValueError):
    """A bad operator setting; the message names the environment variable."""


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = "statmux/runtime:0.1.0"
    router_image: str = "statmux/runtime:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    gang: GangMode = "none"
    kueue_queue: str | None = None  # kueue.x-k8s.io/queue-name for the group pods
    workload: WorkloadMode = "auto"
    master_port: int = MASTER_PORT
    serve_port: int = HTTP_PORT  # Open Inference Protocol (HTTP) of the runtime and the router
    grpc_port: int = GRPC_PORT  # Open Inference Protocol (gRPC) of the router
    cluster_domain: str = "cluster.local"
    resync_seconds: float = 10.0  # the status/readiness timer
    rollout_timeout_seconds: float = 300.0  # then old groups retire one by one

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        d = cls()

        def text(name: str, default: str) -> str:
            return e.get(name, "").strip() or default

        def number(name: str, default: float, minimum: float) -> float:
            raw = e.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
            return value

        gang = text("STATMUX_GANG", d.gang).lower()
        if gang not in _GANG_MODES:
            raise ConfigError(f"STATMUX_GANG={gang!r}; allowed: {', '.join(_GANG_MODES)}")
        workload = text("STATMUX_WORKLOAD", d.workload).lower()
        if workload not in _WORKLOAD_MODES:
            raise ConfigError(
                f"STATMUX_WORKLOAD={workload!r}; allowed: {', '.join(_WORKLOAD_MODES)}"
            )
        return cls(
            runtime_image=text("STATMUX_RUNTIME_IMAGE", d.runtime_image),
            router_image=text("STATMUX_ROUTER_IMAGE", d.router_image),
            image_pull_policy=text("STATMUX_IMAGE_PULL_POLICY", d.image_pull_policy),
            gang=gang,
            kueue_queue=e.get("STATMUX_KUEUE_QUEUE") or None,
            workload=workload,
            master_port=int(number("STATMUX_MASTER_PORT", d.master_port, 1)),
            serve_port=int(number("STATMUX_SERVE_PORT", d.serve_port, 1)),
            grpc_port=int(number("STATMUX_GRPC_PORT", d.grpc_port, 1)),
            cluster_domain=text("STATMUX_CLUSTER_DOMAIN", d.cluster_domain),
            resync_seconds=number("STATMUX_RESYNC_SECONDS", d.resync_seconds, 0.5),
            rollout_timeout_seconds=number(
                "STATMUX_ROLLOUT_TIMEOUT_SECONDS", d.rollout_timeout_seconds, 0
            ),
        )
