"""Profiles built directly from numbers, for tests and benchmarks (no files, no loader).

`bert_like_profile` mimics the shape of the measured bert-1.3b V100 profile in
shared/reference: pipeline stages sum to about 1.01x per extra stage of the single-GPU
latency, tensor parallelism speeds a request up by 1.47x/2.44x/3.31x (tp 2/4/8), and larger
batches cost sub-linearly more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from statmux.placement.profile import ConfigProfile, ModelProfile, ParallelConfig

TP_SPEEDUP = {1: 1.0, 2: 1.47, 4: 2.44, 8: 3.31}


def make_profile(
    name: str,
    stages: Mapping[tuple[int, int], Sequence[float] | Sequence[Sequence[float]] | np.ndarray],
    weight_bytes: float = 1e9,
    batch_sizes: Sequence[int] | None = None,
) -> ModelProfile:
    """A profile from {(pp, tp): per-stage latencies} (batch 1 only) or
    {(pp, tp): [[stage latencies at batch b] for b in batch_sizes]} (default sizes 1, 2, …)."""
    configs = {}
    for (pp, tp), lat in stages.items():
        arr = np.asarray(lat, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        sizes = tuple(batch_sizes) if batch_sizes is not None else tuple(range(1, len(arr) + 1))
        if arr.shape != (len(sizes), pp):
            raise ValueError(
                f"{name} pp{pp}×tp{tp}: latencies have shape {arr.shape}, "
                f"expected ({len(sizes)}, {pp})"
            )
        cfg = ParallelConfig(pp, tp)
        configs[cfg] = ConfigProfile(cfg, sizes, arr, weight_bytes / (pp * tp))
    return ModelProfile(name, weight_bytes, configs)


def bert_like_profile(
    name: str, latency: float = 0.099, weight_bytes: float = 2.6e9, max_gpus: int = 8
) -> ModelProfile:
    """A bert-like profile for every (pp, tp) in {1,2,4,8}² with pp·tp <= max_gpus,
    batch sizes 1, 2, 4, 8, 16; `latency` is the single-GPU batch-1 latency."""
    sizes = (1, 2, 4, 8, 16)
    stages: dict[tuple[int, int], np.ndarray] = {}
    for pp in (1, 2, 4, 8):
        for tp in (1, 2, 4, 8):
            if pp * tp > max_gpus:
                continue
            per_stage = latency / TP_SPEEDUP[tp] * (1.0 + 0.01 * (pp - 1)) / pp
            rows = [[per_stage * (1.0 + 0.6 * np.log2(b))] * pp for b in sizes]
            stages[(pp, tp)] = np.asarray(rows)
    return make_profile(name, stages, weight_bytes=weight_bytes, batch_sizes=sizes)
