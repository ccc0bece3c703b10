"""Profiles built directly from the dataclasses, shared by the placement tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from statmux.placement.profile import ConfigProfile, ModelProfile, ParallelConfig


def make_profile(
    name: str,
    stages: Mapping[tuple[int, int], Sequence[float] | Sequence[Sequence[float]]],
    weight_bytes: float = 1e9,
    batch_sizes: Sequence[int] | None = None,
) -> ModelProfile:
    """A profile from {(pp, tp): per-stage latencies} (batch 1 only) or
    {(pp, tp): [[stage latencies at batch b] for b in batch_sizes]}."""
    configs = {}
    for (pp, tp), lat in stages.items():
        arr = np.asarray(lat, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        sizes = tuple(batch_sizes) if batch_sizes is not None else tuple(range(1, len(arr) + 1))
        assert arr.shape == (len(sizes), pp), (arr.shape, sizes, pp)
        cfg = ParallelConfig(pp, tp)
        configs[cfg] = ConfigProfile(cfg, sizes, arr, weight_bytes / (pp * tp))
    return ModelProfile(name, weight_bytes, configs)


def bert_like_profile(name: str, base: float = 0.1, max_batch: int = 16) -> ModelProfile:
    """A bert-1.3b-like profile: pipeline stages sum to ~1.03x the single-GPU latency,
    tensor parallelism speeds up by 1.47x/2.44x/3.31x, batches scale sub-linearly."""
    tp_speedup = {1: 1.0, 2: 1.47, 4: 2.44, 8: 3.31}
    sizes = [b for b in (1, 2, 4, 8, 16) if b <= max_batch]
    stages: dict[tuple[int, int], list[list[float]]] = {}
    for pp in (1, 2, 4, 8):
        for tp in (1, 2, 4, 8):
            if pp * tp > 8:
                continue
            overhead = 1.0 + 0.01 * (pp - 1)
            per_stage = base / tp_speedup[tp] * overhead / pp
            stages[(pp, tp)] = [[per_stage * (1 + 0.6 * np.log2(b))] * pp for b in sizes]
    return make_profile(name, stages, weight_bytes=2.6e9, batch_sizes=sizes)
