"""Prometheus metrics of the operator (served by `statmux operator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter(
    "statmux_operator_reconciles_total", "ModelSet create/update/resume passes", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "statmux_operator_reconcile_seconds",
    "Wall time of a create/update/resume pass (planning included)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
GANG_RESTARTS = Counter("statmux_operator_gang_restarts_total", "Whole-group restarts")


def observe_reconcile(seconds: float, result: str) -> None:
    RECONCILES.labels(result=result).inc()
    RECONCILE_SECONDS.observe(seconds)
