"""Per-model serving statistics, exposed as Triton-compatible Prometheus metrics and stats JSON.

One `ServingStats` per server holds plain counters updated on the event loop (no locks, no
prometheus objects on the hot path); a collector registered in the server's own
CollectorRegistry turns them into metric families at scrape time, and `triton_stats()` turns
them into the /v2/models/{m}/stats JSON.

Triton declares its nv_inference_* counts and durations as counters whose names carry no
`_total` suffix. prometheus-client's text format appends `_total` to a counter family's
HELP/TYPE lines, so `exposition()` writes those two lines back to Triton's exact names (the
samples already carry them). statmux's own counters are ordinary counters (`_total`).

Engines report per-stage timings through GroupEngine.stage_seconds() -> list[StageSeconds]
(cumulative totals); they appear as the summaries statmux_stage_compute_seconds and
statmux_stage_transfer_seconds labelled model and stage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from statmux.runtime.serving_errors import OUTCOMES

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class StageSeconds:
    """Cumulative timings of one pipeline stage for one model, as an engine reports them."""

    model: str
    stage: int
    compute_seconds: float
    transfer_seconds: float
    count: int


@dataclass
class ModelStats:
    name: str
    version: str = "1"
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    queue_ns: int = 0
    queue_count: int = 0
    compute_ns: int = 0  # per request: the compute time of the batch it ran in
    compute_count: int = 0
    compute_input_ns: int = 0  # per request: decoding and checking its inputs
    compute_output_ns: int = 0  # per request: encoding its outputs
    # Every request ends as exactly one outcome (see serving_errors.OUTCOMES).
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    batch_stats: dict[int, list[int]] = field(default_factory=dict)  # size -> [count, ns]
    last_inference_ms: int = 0
    pending: int = 0
    within_slo: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    swap_count: int = 0
    swap_seconds: float = 0.0

    def record_success(
        self, duration_ns: int, queue_ns: int, compute_ns: int, slo_ok: bool, input_ns: int = 0
    ) -> None:
        self.outcomes["success"] += 1
        self.compute_input_ns += input_ns
        self.success_count += 1
        self.success_ns += duration_ns
        self.queue_count += 1
        self.queue_ns += queue_ns
        self.compute_count += 1
        self.compute_ns += compute_ns
        self.within_slo += slo_ok
        self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, reason: str, duration_ns: int, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.fail_count += 1
        self.fail_ns += duration_ns
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def record_rejection(self, reason: str, duration_ns: int) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.record_failure("REJECTED", duration_ns, "rejected")

    def record_batch(self, rows: int, compute_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += rows
        entry = self.batch_stats.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += compute_ns


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def triton_model_stats(s: ModelStats) -> dict[str, Any]:
    """One entry of Triton's `model_stats` list."""
    return {
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success_count, s.success_ns),
            "fail": _duration(s.fail_count, s.fail_ns),
            "queue": _duration(s.queue_count, s.queue_ns),
            "compute_input": _duration(s.compute_count, s.compute_input_ns),
            "compute_infer": _duration(s.compute_count, s.compute_ns),
            "compute_output": _duration(s.compute_count, s.compute_output_ns),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(count, 0),
                "compute_infer": _duration(count, ns),
                "compute_output": _duration(count, 0),
            }
            for size, (count, ns) in sorted(s.batch_stats.items())
        ],
        "memory_usage": [],
    }


class ServingCollector(Collector):
    """Builds every metric family from the live ModelStats at scrape time."""

    def __init__(
        self,
        stats: Callable[[], list[ModelStats]],
        models_loaded: Callable[[], int],
        stage_seconds: Callable[[], list[StageSeconds]] | None = None,
        gpu_memory: Callable[[], list[tuple[str, int, int]]] | None = None,
        drift: Callable[[], dict[str, float]] | None = None,
        unknown_model: Callable[[], int] | None = None,
    ) -> None:
        self._drift = drift
        self._unknown_model = unknown_model
        self._stats = stats
        self._models_loaded = models_loaded
        self._stage_seconds = stage_seconds
        self._gpu_memory = gpu_memory

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield from self._triton(stats)
        yield from self._statmux(stats)

    def _triton(self, stats: list[ModelStats]) -> Iterator[Metric]:
        counters: list[tuple[str, str, Callable[[ModelStats], float]]] = [
            ("nv_inference_request_success", "Successful inference requests", _success),
            ("nv_inference_count", "Inferences performed (batch rows)", _count),
            ("nv_inference_exec_count", "Batch executions", _exec),
            (
                "nv_inference_request_duration_us",
                "Cumulative duration of successful requests, microseconds",
                _req_us,
            ),
            ("nv_inference_queue_duration_us", "Cumulative queue time, microseconds", _queue_us),
            (
                "nv_inference_compute_input_duration_us",
                "Cumulative input decoding and checking time, microseconds",
                _input_us,
            ),
            (
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute time, microseconds",
                _compute_us,
            ),
            (
                "nv_inference_compute_output_duration_us",
                "Cumulative output encoding time, microseconds",
                _output_us,
            ),
        ]
        for name, doc, value in counters:
            m = Metric(name, doc, "counter")
            for s in stats:
                m.add_sample(name, {"model": s.name, "version": s.version}, value(s))
            yield m
        failure = Metric("nv_inference_request_failure", "Failed inference requests", "counter")
        for s in stats:
            for reason, n in s.failures.items():
                failure.add_sample(
                    "nv_inference_request_failure",
                    {"model": s.name, "version": s.version, "reason": reason},
                    n,
                )
        yield failure
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests queued or running",
            labels=["model", "version"],
        )
        for s in stats:
            pending.add_metric([s.name, s.version], s.pending)
        yield pending

    def _statmux(self, stats: list[ModelStats]) -> Iterator[Metric]:
        within = CounterMetricFamily(
            "statmux_requests_within_slo",
            "Successful requests that finished within their SLO (or had none)",
            labels=["model", "version"],
        )
        rejected = CounterMetricFamily(
            "statmux_requests_rejected",
            "Requests rejected because they would miss their SLO "
            "(reason admission: at arrival; deadline: at dispatch)",
            labels=["model", "version", "reason"],
        )
        outcomes = CounterMetricFamily(
            "statmux_requests",
            "Inference requests by how they ended: success, rejected (admission or deadline), "
            "cancelled (client gone or deadline passed), invalid (bad request), unavailable "
            "(unhealthy, draining, unloaded), internal (a server error)",
            labels=["model", "version", "outcome"],
        )
        swaps = SummaryMetricFamily(
            "statmux_model_swap_seconds", "Seconds spent loading models", labels=["model"]
        )
        for s in stats:
            within.add_metric([s.name, s.version], s.within_slo)
            for reason in ("admission", "deadline"):
                rejected.add_metric([s.name, s.version, reason], s.rejected.get(reason, 0))
            swaps.add_metric([s.name], count_value=s.swap_count, sum_value=s.swap_seconds)
            for outcome, n in s.outcomes.items():
                outcomes.add_metric([s.name, s.version, outcome], n)
        yield outcomes
        if self._unknown_model is not None:
            yield CounterMetricFamily(
                "statmux_requests_unknown_model",
                "Inference requests for a model this group does not serve",
                value=self._unknown_model(),
            )
        if self._drift is not None:
            drift = GaugeMetricFamily(
                "statmux_profile_drift_ratio",
                "Observed over profiled batch latency (EWMA); admission predicts with the "
                "observed latencies",
                labels=["model"],
            )
            for model, ratio in sorted(self._drift().items()):
                drift.add_metric([model], ratio)
            yield drift
        yield within
        yield rejected
        yield swaps
        yield GaugeMetricFamily(
            "statmux_models_loaded", "Models resident on the group", value=self._models_loaded()
        )
        compute = SummaryMetricFamily(
            "statmux_stage_compute_seconds",
            "Compute time per pipeline stage, as reported by the engine",
            labels=["model", "stage"],
        )
        transfer = SummaryMetricFamily(
            "statmux_stage_transfer_seconds",
            "Activation transfer time per pipeline stage, as reported by the engine",
            labels=["model", "stage"],
        )
        for st in self._stage_seconds() if self._stage_seconds else []:
            labels = [st.model, str(st.stage)]
            compute.add_metric(labels, count_value=st.count, sum_value=st.compute_seconds)
            transfer.add_metric(labels, count_value=st.count, sum_value=st.transfer_seconds)
        yield compute
        yield transfer
        if self._gpu_memory is not None:
            used = GaugeMetricFamily(
                "statmux_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
            )
            total = GaugeMetricFamily(
                "statmux_gpu_memory_total_bytes", "GPU memory in total", labels=["gpu"]
            )
            for gpu, used_b, total_b in self._gpu_memory():
                used.add_metric([gpu], used_b)
                total.add_metric([gpu], total_b)
            yield used
            yield total


def _success(s: ModelStats) -> float:
    return s.success_count


def _count(s: ModelStats) -> float:
    return s.inference_count


def _exec(s: ModelStats) -> float:
    return s.execution_count


def _req_us(s: ModelStats) -> float:
    return s.success_ns / 1000  # Triton pairs the duration with the success count


def _input_us(s: ModelStats) -> float:
    return s.compute_input_ns / 1000


def _output_us(s: ModelStats) -> float:
    return s.compute_output_ns / 1000


def _queue_us(s: ModelStats) -> float:
    return s.queue_ns / 1000


def _compute_us(s: ModelStats) -> float:
    return s.compute_ns / 1000


def cuda_memory() -> Callable[[], list[tuple[str, int, int]]] | None:
    """A reader of (gpu, used, total) bytes per visible GPU, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def read() -> list[tuple[str, int, int]]:
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append((str(i), total - free, total))
        return out

    return read


def make_registry(collector: ServingCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


_TRITON_TOTAL = re.compile(rb"^(# (?:HELP|TYPE) nv_inference_\w+)_total ", re.MULTILINE)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format, with Triton's counters under Triton's names (no `_total`)."""
    return _TRITON_TOTAL.sub(rb"\1 ", generate_latest(registry))
