"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from statmux.contract import GRPC_PORT, HTTP_PORT, MASTER_PORT
from statmux.operator.pod_resources import parse_cpu, parse_memory

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
    # Gang restarts of one group: the first is immediate, the n-th in a row waits
    # base * 2^(n-2) (capped) after the failure; the count resets once the group has stayed
    # ready this long. Like kubelet's CrashLoopBackOff (10 s doubling to 5 min, reset after
    # 10 min), which a gang restart defeats by deleting the crashed pod.
    gang_restart_backoff_seconds: float = 10.0  # 0: every restart immediate
    gang_restart_backoff_max_seconds: float = 300.0
    gang_restart_stable_seconds: float = 600.0
    # Group pods' CPU request and memory request (= limit) per GPU, the router's: None = unset
    group_cpu_per_gpu_millis: int | None = None
    group_memory_per_gpu_bytes: int | None = None
    router_cpu_millis: int | None = None
    router_memory_bytes: int | None = None

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

        def quantity(name: str, parse: Callable[[str], int]) -> int | None:
            raw = e.get(name, "").strip()
            if not raw:
                return None
            try:
                return parse(raw)
            except ValueError as err:
                raise ConfigError(f"{name}: {err}") from None

        backoff = number("STATMUX_GANG_RESTART_BACKOFF_SECONDS", d.gang_restart_backoff_seconds, 0)
        backoff_max = number(
            "STATMUX_GANG_RESTART_BACKOFF_MAX_SECONDS", d.gang_restart_backoff_max_seconds, 0
        )
        if backoff_max < backoff:
            raise ConfigError(
                f"STATMUX_GANG_RESTART_BACKOFF_MAX_SECONDS={backoff_max:g} must be at least "
                f"STATMUX_GANG_RESTART_BACKOFF_SECONDS={backoff:g}"
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
            gang_restart_backoff_seconds=backoff,
            gang_restart_backoff_max_seconds=backoff_max,
            gang_restart_stable_seconds=number(
                "STATMUX_GANG_RESTART_STABLE_SECONDS", d.gang_restart_stable_seconds, 0
            ),
            group_cpu_per_gpu_millis=quantity("STATMUX_GROUP_CPU_PER_GPU", parse_cpu),
            group_memory_per_gpu_bytes=quantity("STATMUX_GROUP_MEMORY_PER_GPU", parse_memory),
            router_cpu_millis=quantity("STATMUX_ROUTER_CPU", parse_cpu),
            router_memory_bytes=quantity("STATMUX_ROUTER_MEMORY", parse_memory),
        )

    def gang_restart_delay(self, restarts: int) -> float:
        """Seconds the next gang restart of a group waits after `restarts` in a row."""
        if restarts <= 0:
            return 0.0
        # the exponent is bounded so that a long streak cannot overflow the float
        delay = self.gang_restart_backoff_seconds * 2.0 ** min(restarts - 1, 64)
        return min(delay, self.gang_restart_backoff_max_seconds)
