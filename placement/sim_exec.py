"""Execution model of the simulator: how long a batch takes through a group's pipeline.

A group of pp stages is a chain; stage k is free from time free[g, k]. A batch entering at t
runs s_0 = max(t, free[g, 0]), e_0 = s_0 + l_0, then s_k = max(e_{k-1}, free[g, k]),
e_k = s_k + l_k; its completion is e_{pp-1}. Stage latencies come from the profile of the
model for the group's (pp, tp) at the batch's size (see statmux.placement.profile).

These are numba functions inlined into the driver loops of statmux.placement.sim_kernels.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def pipeline_end(t: float, free: np.ndarray, lat: np.ndarray, g: int, npp: int) -> float:
    """Completion of a batch entering group g at t with stage latencies lat[:npp]; no commit."""
    e = t
    for k in range(npp):
        f = free[g, k]
        if f > e:
            e = f
        e += lat[k]
    return e


@numba.njit(cache=True, nogil=True, inline="always")
def pipeline_commit(
    t: float, free: np.ndarray, lat: np.ndarray, g: int, npp: int, busy: np.ndarray
) -> float:
    """Run the batch: same arithmetic as pipeline_end, and occupy the stages."""
    e = t
    for k in range(npp):
        f = free[g, k]
        if f > e:
            e = f
        e += lat[k]
        free[g, k] = e
        busy[g, k] += lat[k]
    return e
