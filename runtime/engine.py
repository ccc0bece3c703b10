"""The contract between a group's execution engine and its serving front end.

The engine (runtime/pipeline_engine.py for a real group, runtime/local_engine.py in one
process) owns the models, the torch.distributed group, the pipeline and tensor parallelism
and the weight swapping. The front end (server, scheduler,
metrics) owns queues, admission, batching and the Open Inference Protocol. The front end
only talks to the engine through this protocol, on the group leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from statmux.runtime.metrics import StageSeconds

# Open Inference Protocol datatypes <-> numpy
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_OIP: dict[np.dtype, str] = {v: k for k, v in OIP_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # an Open Inference Protocol datatype, e.g. "INT64", "FP32"
    shape: tuple[int, ...]  # -1 for a variable dimension; the first is the batch dimension
    optional: bool = False


@dataclass
class ModelInfo:
    name: str
    platform: str  # e.g. "statmux-bert"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 1
    slo_seconds: float | None = None
    # Per batch size, per pipeline stage, seconds (from the Plan): used by admission control.
    stage_latency_s: dict[int, list[float]] = field(default_factory=dict)
    version: str = "1"
    # The longest sequence (dimension 1 of a [batch, sequence] input) a request may carry:
    # it bounds a request's cost. None: the model has no sequence dimension.
    max_sequence_length: int | None = None
    # The Plan's per-request overhead (front end, router): time outside the pipeline that
    # counts against the SLO, so the pipeline must finish by arrival + SLO - this, as in the
    # simulator and the router's admission.
    request_overhead_s: float = 0.0
    # The Plan's admissionSeconds: a bound below the SLO that admission and the queue's
    # deadlines use instead (a re-plan keeps a previous plan's after the SLO was loosened).
    admission_seconds: float | None = None

    @property
    def admission_bound_seconds(self) -> float | None:
        """The latency admission and the deadlines use: admission_seconds, else the SLO."""
        return self.slo_seconds if self.admission_seconds is None else self.admission_seconds


Request = Mapping[str, np.ndarray]  # input name -> array whose first dim is this request's rows
Response = dict[str, np.ndarray]


class EngineError(RuntimeError):
    """The group cannot run the batch (a rank died, a model failed to load, ...)."""


class GroupEngine(Protocol):
    """What the leader's front end needs from the group.

    Engines subclass it explicitly, so that `try_inline` (an optional fast path) defaults to
    declining.
    """

    def model_infos(self) -> dict[str, ModelInfo]:
        """Every model the group hosts (loaded or not)."""
        ...

    def submit(self, model: str, batch: list[Request]) -> Future[list[Response]]:
        """Run one batch of requests for one model through the group's pipeline.

        Non-blocking: several batches may be in flight across the pipeline stages at once.
        The future resolves to one Response per request, in order, or raises EngineError.
        """
        ...

    def load(self, model: str) -> float:
        """Make the model resident on every rank (swap in); returns the seconds it took."""
        ...

    def unload(self, model: str) -> None:
        """Drop the model's weights from the GPUs (they stay in pinned CPU memory)."""
        ...

    def loaded(self) -> set[str]: ...

    def healthy(self) -> bool:
        """False once any rank of the group is gone; in-flight futures then fail."""
        ...

    def shutdown(self) -> None: ...

    def swap_totals(self) -> dict[str, tuple[int, float]]:
        """Per model: swap-ins so far and their seconds (on-demand swaps and loads alike)."""
        ...

    def stage_seconds(self) -> list[StageSeconds]:
        """Cumulative compute and transfer seconds per (model, stage), for /metrics."""
        ...

    # optional -----------------------------------------------------------------------

    def ready(self) -> bool:
        """Healthy and no rank suspect (late heartbeats): readiness goes false before the
        group is declared failed, so routers stop sending work to a rank that may be gone."""
        return self.healthy()

    @property
    def failure(self) -> str | None:
        """Why the group failed (None while healthy), for the leader's exit message."""
        return None if self.healthy() else "the group is unhealthy"

    def try_inline(self, model: str, batch: list[Request]) -> list[Response] | None:
        """Run a small batch now on the caller's (event loop) thread, or None to decline.

        Engines whose batches are cheap enough skip `submit`'s Future round trip this way."""
        return None
