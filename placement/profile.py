"""Latency/memory profile types shared by the profile loaders, the simulator and the search.

A profile says, for each parallel config (pp, tp), how long each pipeline stage takes at each
batch size and how many weight bytes each GPU of the group holds for the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, order=True)
class ParallelConfig:
    pp: int  # pipeline stages
    tp: int  # tensor-parallel degree inside each stage

    @property
    def gpus(self) -> int:
        return self.pp * self.tp

    def __str__(self) -> str:
        return f"pp{self.pp}×tp{self.tp}"


@dataclass
class ConfigProfile:
    config: ParallelConfig
    batch_sizes: tuple[int, ...]  # ascending, starts at 1
    stage_latency: np.ndarray  # float64, shape (len(batch_sizes), pp), seconds
    weight_bytes_per_gpu: float  # the largest per-GPU share over the stages
    measured: bool = True  # False when filled by the analytic model

    def latency(self, batch: int = 1) -> float:
        """End-to-end latency of one batch through all stages (no queueing)."""
        return float(self.stage_latency[self._row(batch)].sum())

    def max_stage(self, batch: int = 1) -> float:
        """The pipeline's bottleneck stage: its inverse is the group's throughput."""
        return float(self.stage_latency[self._row(batch)].max())

    def _row(self, batch: int) -> int:
        # Batches between profiled sizes run at the next profiled size (padding).
        for i, b in enumerate(self.batch_sizes):
            if b >= batch:
                return i
        raise ValueError(f"batch {batch} exceeds the largest profiled batch {self.batch_sizes[-1]}")


@dataclass(frozen=True)
class Overheads:
    """Serving costs that a per-stage compute profile does not show (measured by the
    runtime's profiler; AlpaServe's simulator uses request 0.011 s, stage fraction 0.009).

    request_seconds: added to every request's completion (front end, router, queues
    outside the pipeline); it counts against the SLO but occupies no stage.
    stage_seconds: added to every stage that receives activations from a previous stage.
    stage_fraction: every stage's latency is multiplied by 1 + stage_fraction · pp.
    """

    request_seconds: float = 0.0
    stage_seconds: float = 0.0
    stage_fraction: float = 0.0

    def apply(self, stage_latency: np.ndarray) -> np.ndarray:
        """Stage latencies (batch sizes x pp) with the per-stage overheads added."""
        if not (self.stage_seconds or self.stage_fraction):
            return stage_latency
        pp = stage_latency.shape[-1]
        out = stage_latency * (1.0 + self.stage_fraction * pp)
        out[..., 1:] += self.stage_seconds
        return out


NO_OVERHEADS = Overheads()


@dataclass
class ModelProfile:
    name: str
    weight_bytes: float
    configs: dict[ParallelConfig, ConfigProfile] = field(default_factory=dict)
    overheads: Overheads = NO_OVERHEADS
    # Batch-1 single-GPU latency when (1, 1) is not among the configs (derived by the
    # analytic model from the measured ones).
    reference_latency: float | None = None

    @property
    def single_device_latency(self) -> float:
        """Batch-1 latency on one GPU: the base of `sloScale`."""
        single = self.configs.get(ParallelConfig(1, 1))
        if single is not None:
            return single.latency(1)
        if self.reference_latency is None:
            raise ValueError(f"profile {self.name!r} has no single-GPU latency")
        return self.reference_latency

    @property
    def measured_configs(self) -> list[ParallelConfig]:
        return sorted(c for c, cp in self.configs.items() if cp.measured)

    def get(self, pp: int, tp: int) -> ConfigProfile | None:
        return self.configs.get(ParallelConfig(pp, tp))

    def min_bytes_per_gpu(self) -> float:
        return min(c.weight_bytes_per_gpu for c in self.configs.values())
