"""Scheduling policy of the simulator: routing, SLO-aware admission and batch formation.

- Routing: a request goes to the group that hosts its model and would complete it earliest
  (ties: the lowest group index).
- Admission: if even that completion is later than the request's deadline (arrival + SLO),
  the request is rejected at arrival; it counts as a miss and occupies nothing.
- Batching (max batch size > 1): each group keeps one FIFO queue per model. When stage 0 of
  the group frees, it first drops queued requests that can no longer meet their deadline
  even alone (misses), then serves the model whose head request has the earliest deadline,
  with the largest batch (≤ the max batch size, ≤ the largest profiled batch) that still
  finishes by the head's deadline (the earliest deadline of the batch, as queues are FIFO).

Numba functions, inlined into statmux.placement.sim_kernels. Note: numba's on-disk cache
keys on the file of the driver only; after editing this file or sim_exec.py, also touch
sim_kernels.py (or remove placement/__pycache__/*.nbi) so the drivers recompile.
"""

from __future__ import annotations

import numba
import numpy as np

from statmux.placement.sim_exec import pipeline_end


@numba.njit(cache=True, nogil=True, inline="always")
def route_earliest(
    t: float,
    m: int,
    host_ptr: np.ndarray,
    host_groups: np.ndarray,
    npp: np.ndarray,
    lat: np.ndarray,
    free: np.ndarray,
) -> tuple[int, float]:
    """(group, completion) of the hosting group that finishes model m's request first."""
    best = np.inf
    best_g = -1
    for h in range(host_ptr[m], host_ptr[m + 1]):
        g = host_groups[h]
        e = pipeline_end(t, free, lat[g, m], g, npp[g])
        if e < best:
            best = e
            best_g = g
    return best_g, best


@numba.njit(cache=True, nogil=True, inline="always")
def admit(group: int, completion: float, deadline: float) -> bool:
    """SLO-aware admission: only requests that a group can finish by their deadline."""
    return group >= 0 and completion <= deadline


@numba.njit(cache=True, nogil=True)
def drop_expired(
    g: int,
    tau: float,
    n_models: int,
    qhead: np.ndarray,
    qlen: np.ndarray,
    nxt: np.ndarray,
    deadlines: np.ndarray,
    model_ids: np.ndarray,
    latb: np.ndarray,
    npp: int,
    free: np.ndarray,
    dropped: np.ndarray,
) -> int:
    """Drop queued requests of group g that cannot finish by their deadline if started at tau."""
    n = 0
    for m in range(n_models):
        if qlen[g, m] == 0:
            continue
        # Batch-1 completion is the same for every request of m: compute it once.
        alone = pipeline_end(tau, free, latb[g, m, 0], g, npp)
        i = qhead[g, m]
        while i >= 0 and alone > deadlines[i]:
            dropped[model_ids[i]] += 1
            qlen[g, m] -= 1
            n += 1
            i = nxt[i]
        qhead[g, m] = i
    return n


@numba.njit(cache=True, nogil=True)
def earliest_deadline_model(
    g: int, n_models: int, qhead: np.ndarray, qlen: np.ndarray, deadlines: np.ndarray
) -> int:
    """The model whose head request has the earliest deadline (-1: nothing queued)."""
    best = np.inf
    best_m = -1
    for m in range(n_models):
        if qlen[g, m] > 0:
            d = deadlines[qhead[g, m]]
            if d < best:
                best = d
                best_m = m
    return best_m


@numba.njit(cache=True, nogil=True)
def largest_feasible_batch(
    g: int,
    m: int,
    tau: float,
    limit: int,
    head_deadline: float,
    latb: np.ndarray,
    npp: int,
    free: np.ndarray,
) -> int:
    """Largest batch b ≤ limit that finishes by head_deadline (1 when even b=1 would not)."""
    b = 1
    while b < limit and pipeline_end(tau, free, latb[g, m, b], g, npp) <= head_deadline:
        b += 1
    return b
