"""The simulator's compiled driver loops: one pass over the requests in arrival order.

They combine the scheduling policy (statmux.placement.sim_policy) with the execution model
(statmux.placement.sim_exec); statmux.placement.simulator prepares their arrays.

Array conventions (G groups, M models, P = the largest pp, N requests, B = max batch):
  host_ptr (M+1,), host_groups: CSR list of the groups hosting each model, ascending
  npp (G,): stages of each group
  lat (G, M, P): batch-1 stage latencies of model m on group g (unused entries: 0)
  latb (G, M, B, P): stage latencies per batch size b+1; maxb (G, M): usable max batch
  deadlines (N,): arrival + SLO of the request's model
Outputs per model: good, rejected (at arrival), dropped (from a queue); busy (G, P) seconds;
routed (G,): requests routed to each group, admitted or not (AlpaServe's greedy ranks groups
by it).
"""

from __future__ import annotations

import numba
import numpy as np

from statmux.placement.sim_exec import pipeline_commit, pipeline_end
from statmux.placement.sim_policy import (
    admit,
    drop_expired,
    earliest_deadline_model,
    largest_feasible_batch,
    route_earliest,
)


@numba.njit(cache=True, nogil=True)
def run_unbatched(
    arrivals: np.ndarray,
    model_ids: np.ndarray,
    deadlines: np.ndarray,
    host_ptr: np.ndarray,
    host_groups: np.ndarray,
    npp: np.ndarray,
    lat: np.ndarray,
    n_models: int,
    record: bool,
    latencies: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Requests one at a time in arrival order; returns (good, rejected, busy, routed)."""
    n_groups, max_pp = npp.size, lat.shape[2]
    free = np.zeros((n_groups, max_pp))
    busy = np.zeros((n_groups, max_pp))
    routed = np.zeros(n_groups, np.int64)
    good = np.zeros(n_models, np.int64)
    rejected = np.zeros(n_models, np.int64)
    for i in range(arrivals.size):
        t = arrivals[i]
        m = model_ids[i]
        g, end = route_earliest(t, m, host_ptr, host_groups, npp, lat, free)
        if g >= 0:
            routed[g] += 1
        if not admit(g, end, deadlines[i]):
            rejected[m] += 1
            if record:
                latencies[i] = -1.0
            continue
        pipeline_commit(t, free, lat[g, m], g, npp[g], busy)
        good[m] += 1
        if record:
            latencies[i] = end - t
    return good, rejected, busy, routed


@numba.njit(cache=True, nogil=True)
def _reestimate(
    g: int,
    n_models: int,
    est: np.ndarray,
    free: np.ndarray,
    qhead: np.ndarray,
    nxt: np.ndarray,
    arrivals: np.ndarray,
    lat: np.ndarray,
    npp: int,
) -> None:
    """est[g] = stage free times if every queued request then ran alone, model by model."""
    for k in range(npp):
        est[g, k] = free[g, k]
    for m in range(n_models):
        j = qhead[g, m]
        while j >= 0:
            e = arrivals[j]
            for k in range(npp):
                if est[g, k] > e:
                    e = est[g, k]
                e += lat[g, m, k]
                est[g, k] = e
            j = nxt[j]


@numba.njit(cache=True, nogil=True)
def run_batched(
    arrivals: np.ndarray,
    model_ids: np.ndarray,
    deadlines: np.ndarray,
    host_ptr: np.ndarray,
    host_groups: np.ndarray,
    npp: np.ndarray,
    lat: np.ndarray,
    latb: np.ndarray,
    maxb: np.ndarray,
    n_models: int,
    record: bool,
    latencies: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Event-driven variant with per-group queues; returns (good, rejected, dropped, busy,
    routed).

    Before routing a request that arrives at t, every group dispatches all batches whose
    dispatch time tau = max(free[g, 0], oldest queued arrival) is < t (a request arriving
    exactly at tau joins that batch). Routing and admission use est[g], the stage free times
    if the group ran its queue one request at a time at batch 1 (an upper bound in practice).
    """
    n = arrivals.size
    n_groups, max_pp = npp.size, lat.shape[2]
    free = np.zeros((n_groups, max_pp))
    est = np.zeros((n_groups, max_pp))
    busy = np.zeros((n_groups, max_pp))
    qhead = np.full((n_groups, n_models), -1, np.int64)
    qtail = np.full((n_groups, n_models), -1, np.int64)
    qlen = np.zeros((n_groups, n_models), np.int64)
    queued = np.zeros(n_groups, np.int64)
    nxt = np.full(n, -1, np.int64)
    good = np.zeros(n_models, np.int64)
    rejected = np.zeros(n_models, np.int64)
    dropped = np.zeros(n_models, np.int64)
    routed = np.zeros(n_groups, np.int64)
    for i in range(n + 1):
        t = arrivals[i] if i < n else np.inf
        for g in range(n_groups):
            while queued[g] > 0:
                oldest = np.inf
                for m in range(n_models):
                    if qlen[g, m] > 0 and arrivals[qhead[g, m]] < oldest:
                        oldest = arrivals[qhead[g, m]]
                tau = max(free[g, 0], oldest)
                if tau >= t:
                    break
                queued[g] -= drop_expired(
                    g,
                    tau,
                    n_models,
                    qhead,
                    qlen,
                    nxt,
                    deadlines,
                    model_ids,
                    latb,
                    npp[g],
                    free,
                    dropped,
                )
                m = earliest_deadline_model(g, n_models, qhead, qlen, deadlines)
                if m >= 0:
                    head = qhead[g, m]
                    limit = min(maxb[g, m], qlen[g, m])
                    b = largest_feasible_batch(
                        g, m, tau, limit, deadlines[head], latb, npp[g], free
                    )
                    end = pipeline_commit(tau, free, latb[g, m, b - 1], g, npp[g], busy)
                    j = head
                    for _ in range(b):
                        if record:
                            latencies[j] = end - arrivals[j]
                        j = nxt[j]
                    good[m] += b
                    qhead[g, m] = j
                    qlen[g, m] -= b
                    queued[g] -= b
                _reestimate(g, n_models, est, free, qhead, nxt, arrivals, lat, npp[g])
        if i == n:
            break
        m = model_ids[i]
        g, end = route_earliest(t, m, host_ptr, host_groups, npp, lat, est)
        if g >= 0:
            routed[g] += 1
        if record:
            latencies[i] = -1.0
        if not admit(g, end, deadlines[i]):
            rejected[m] += 1
            continue
        if qlen[g, m] == 0:
            qhead[g, m] = i
        else:
            nxt[qtail[g, m]] = i
        qtail[g, m] = i
        qlen[g, m] += 1
        queued[g] += 1
        # Reserve the request's batch-1 slot in the estimate.
        e = t
        for k in range(npp[g]):
            if est[g, k] > e:
                e = est[g, k]
            e += lat[g, m, k]
            est[g, k] = e
    return good, rejected, dropped, busy, routed


__all__ = ["pipeline_end", "run_batched", "run_unbatched"]
