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


@dataclass
class ModelProfile:
    name: str
    weight_bytes: float
    configs: dict[ParallelConfig, ConfigProfile] = field(default_factory=dict)

    @property
    def single_device_latency(self) -> float:
        """Batch-1 latency on one GPU: the base of `sloScale`."""
        return self.configs[ParallelConfig(1, 1)].latency(1)

    def get(self, pp: int, tp: int) -> ConfigProfile | None:
        return self.configs.get(ParallelConfig(pp, tp))

    def min_bytes_per_gpu(self) -> float:
        return min(c.weight_bytes_per_gpu for c in self.configs.values())
