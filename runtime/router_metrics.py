"""The router's Prometheus metrics (its own registry; served on /metrics).

Per model (label `model`):
  statmux_router_requests_total                 inference requests received
  statmux_router_success_total                  answered 200
  statmux_router_within_slo_total               answered 200 within the model's SLO
  statmux_router_rejected_total{reason}         refused: slo (admission: no group can meet the
                                                deadline), unavailable (no live group hosts the
                                                model), group (a group's own admission said 429)
  statmux_router_failed_total{reason}           invalid (4xx from the request itself),
                                                timeout (a hop timed out), group (a group
                                                failed the request: 5xx or broken connection),
                                                cancelled (the client went away), internal
  statmux_router_retries_total                  requests re-sent to another replica
  statmux_router_request_duration_seconds       histogram of successful requests' latency
  statmux_router_arrival_rate                   requests/s over the last ARRIVAL_WINDOW_S
  statmux_router_slo_seconds                    the model's SLO (for dashboards)
Per group (label `group`):
  statmux_router_group_up                       1 while the group is in rotation
  statmux_router_group_outstanding              requests sent and not yet answered
  statmux_router_hop_timeouts_total             requests or health checks that timed out
Plan:
  statmux_router_plan_reloads_total{result}     ok | error (a bad Plan keeps the last good one)

The per-model series are plain numbers on the event loop, exposed by a collector when
/metrics is read: a prometheus_client Counter child costs about 1 µs per update (a lock and
checks, for threads the router does not have), and a request makes six updates (the router's
overhead budget is 300 µs; docs/router.md, "Overhead").
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

ARRIVAL_WINDOW_S = 10.0
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    math.inf,
)
REJECT_REASONS = ("slo", "unavailable", "group")
FAIL_REASONS = ("invalid", "timeout", "group", "cancelled", "internal")


class ArrivalRate:
    """Arrivals per second over a sliding window, kept as per-second counts."""

    def __init__(self, window_s: float = ARRIVAL_WINDOW_S, clock: Callable[[], float] = time.time):
        self.window_s = window_s
        self.clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, count]

    def add(self) -> None:
        second = int(self.clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
            self._trim(second)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()

    def rate(self) -> float:
        self._trim(int(self.clock()))
        return sum(c for _, c in self._buckets) / self.window_s


@dataclass(eq=False)
class ModelMetrics:
    """One model's counts (the router adds to them; the collector reads them)."""

    requests: int = 0
    success: int = 0
    within_slo: int = 0
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAIL_REASONS, 0))
    # latency histogram of successful requests: counts per bucket (not cumulative) and sum
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)

    def observe(self, latency: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency


@dataclass
class GroupGauges:
    up: Callable[[], dict[str, bool]]
    outstanding: Callable[[], dict[str, int]]
    slo: Callable[[], dict[str, float]]
    rates: Callable[[], dict[str, float]]


class _ModelSeries(Collector):
    """Every model's counts as Prometheus counters and a histogram."""

    def __init__(self, models: dict[str, ModelMetrics]) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        requests = counter("statmux_router_requests", "inference requests received", ["model"])
        success = counter("statmux_router_success", "requests answered successfully", ["model"])
        within = counter(
            "statmux_router_within_slo",
            "requests answered successfully within the model's SLO",
            ["model"],
        )
        rejected = counter(
            "statmux_router_rejected",
            "requests refused: slo (no group can meet the deadline), unavailable (no live "
            "group hosts the model), group (a group's admission refused it)",
            ["model", "reason"],
        )
        failed = counter(
            "statmux_router_failed",
            "requests that failed: invalid (bad request), timeout (a hop timed out), group "
            "(the group failed it), cancelled (the client went away), internal",
            ["model", "reason"],
        )
        retries = counter(
            "statmux_router_retries",
            "requests re-sent to another replica after a group failed",
            ["model"],
        )
        duration = HistogramMetricFamily(
            "statmux_router_request_duration_seconds",
            "latency of successful requests at the router (arrival to response)",
            labels=["model"],
        )
        for name, m in self.models.items():
            requests.add_metric([name], m.requests)
            success.add_metric([name], m.success)
            within.add_metric([name], m.within_slo)
            retries.add_metric([name], m.retries)
            for reason, n in m.rejected.items():
                rejected.add_metric([name, reason], n)
            for reason, n in m.failed.items():
                failed.add_metric([name, reason], n)
            cumulative = 0
            buckets = []
            for bound, n in zip(LATENCY_BUCKETS, m.buckets, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            duration.add_metric([name], buckets, m.latency_sum)
        yield from (requests, success, within, rejected, failed, retries, duration)


class _Gauges(Collector):
    def __init__(self, read: GroupGauges) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "statmux_router_group_up", "1 while the group is in rotation", labels=["group"]
        )
        for g, ok in sorted(self.read.up().items()):
            up.add_metric([g], 1.0 if ok else 0.0)
        out = GaugeMetricFamily(
            "statmux_router_group_outstanding",
            "requests sent to the group and not answered yet",
            labels=["group"],
        )
        for g, n in sorted(self.read.outstanding().items()):
            out.add_metric([g], float(n))
        slo = GaugeMetricFamily("statmux_router_slo_seconds", "the model's SLO", labels=["model"])
        for m, s in sorted(self.read.slo().items()):
            slo.add_metric([m], s)
        rate = GaugeMetricFamily(
            "statmux_router_arrival_rate",
            f"requests per second arriving at the router over the last {ARRIVAL_WINDOW_S:g} s",
            labels=["model"],
        )
        for m, r in sorted(self.read.rates().items()):
            rate.add_metric([m], r)
        yield from (up, out, slo, rate)


class RouterMetrics:
    def __init__(self, gauges: GroupGauges) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.models: dict[str, ModelMetrics] = {}
        r.register(_ModelSeries(self.models))
        self.hop_timeouts = Counter(
            "statmux_router_hop_timeouts",
            "requests or health checks to a group that timed out",
            ["group"],
            registry=r,
        )
        self.plan_reloads = Counter(
            "statmux_router_plan_reloads",
            "plan changes read: ok, or error (the last good plan stays)",
            ["result"],
            registry=r,
        )
        r.register(_Gauges(gauges))

    def model(self, name: str) -> ModelMetrics:
        """`name`'s counts (created at zero: every model of the plan has its series)."""
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelMetrics()
        return m
