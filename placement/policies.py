"""The placement policies: sr, clockwork++, alpaserve, statmux and manual.

- sr: selective replication, every replica on one GPU, greedy on simulated attainment.
- clockwork++: sr re-run on every time window with the window's own arrivals and zero swap
  cost (an oracle upper bound for replication, as in the AlpaServe paper).
- alpaserve: the published AlpaServe search (statmux.placement.alpaserve): every group
  partition, its fast greedy model selection, and device separation between latency clusters.
- statmux: AlpaServe's space screened by one packing per partition and split, greedy
  fills on the best, local search on the whole workload (statmux.placement.statmux_search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from statmux.placement.alpaserve import alpaserve_search
from statmux.placement.greedy import greedy_select
from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import (
    GROUP_SIZES,
    Deadline,
    SearchProblem,
    configs_of_size,
)
from statmux.placement.statmux_search import StatmuxSearch


@dataclass
class PolicyResult:
    placement: Placement
    # Set when the policy's attainment is not that of one static placement (clockwork++).
    attainment: float | None = None
    notes: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- sr
def selective_replication(problem: SearchProblem, deadline: Deadline | None = None) -> Placement:
    groups = [Group(ParallelConfig(1, 1)) for _ in range(problem.num_gpus)]
    return greedy_select(problem, groups, deadline=deadline)


def sr_policy(problem: SearchProblem) -> PolicyResult:
    return PolicyResult(selective_replication(problem))


# ---------------------------------------------------------------------------- clockwork++
def clockwork_pp_policy(problem: SearchProblem, windows: int | None = None) -> PolicyResult:
    wl = problem.eval_workload or problem.workload
    n = windows or max(1, min(60, int(wl.duration // 60)))
    good = 0
    total = 0
    static = selective_replication(problem)
    for i, part in enumerate(wl.windows(wl.duration / n)):
        if len(part.arrivals) == 0:
            continue
        sub = SearchProblem(
            problem.models,
            problem.profiles,
            problem.slo,
            part,
            problem.num_gpus,
            problem.budget,
            problem.gpus_per_node,
            problem.max_batch_size,
        )
        placement = selective_replication(sub)
        good += int(sub.good_per_model(placement).sum())
        total += len(part.arrivals)
        problem.simulations += sub.simulations
        problem.say(f"clockwork++ window {i + 1}/{n}")
    return PolicyResult(static, attainment=good / max(total, 1), notes={"windows": n})


# ---------------------------------------------------------------------------- splitting
def latency_clusters(problem: SearchProblem, ratio: float = 2.0) -> list[list[str]]:
    """Group models whose single-GPU latencies are within `ratio` of the cluster's fastest."""
    by_latency = sorted(problem.models, key=lambda m: problem.profiles[m].single_device_latency)
    clusters: list[list[str]] = []
    base = 0.0
    for m in by_latency:
        lat = problem.profiles[m].single_device_latency
        if not clusters or lat > ratio * base:
            clusters.append([])
            base = lat
        clusters[-1].append(m)
    return clusters


def split_gpus(problem: SearchProblem, clusters: list[list[str]]) -> list[int] | None:
    """GPUs per cluster in proportion to demand, at least enough to hold each cluster."""
    one = ParallelConfig(1, 1)
    demand = np.array([sum(problem.demand(m, one) for m in c) + 1e-9 for c in clusters])
    need = [_min_gpus(problem, c) for c in clusters]
    if sum(need) > problem.num_gpus:
        return None
    share = demand / demand.sum() * problem.num_gpus
    alloc = [max(need[i], math.floor(share[i])) for i in range(len(clusters))]
    while sum(alloc) > problem.num_gpus:
        i = max(range(len(alloc)), key=lambda j: alloc[j] - need[j])
        alloc[i] -= 1
    order = sorted(range(len(clusters)), key=lambda j: alloc[j] - share[j])
    k = 0
    while sum(alloc) < problem.num_gpus:
        alloc[order[k % len(order)]] += 1
        k += 1
    return alloc


def _min_gpus(problem: SearchProblem, models: list[str]) -> int:
    """The smallest group size that can hold the cluster's biggest model."""
    for size in GROUP_SIZES:
        cfgs = configs_of_size(size, (problem.profiles[m] for m in models))
        if cfgs and all(any(problem.fits_alone(m, c) for c in cfgs) for m in models):
            return size
    return problem.num_gpus + 1


# ---------------------------------------------------------------------------- alpaserve
def alpaserve_policy(problem: SearchProblem, split: bool = True) -> PolicyResult:
    """The published AlpaServe search (statmux.placement.alpaserve)."""
    found = alpaserve_search(problem, separation=split)
    notes: dict[str, object] = dict(found.notes)
    if found.split is not None:
        notes["split"] = found.split
    return PolicyResult(found.placement, notes=notes)


# ---------------------------------------------------------------------------- statmux
def statmux_policy(problem: SearchProblem, refine_simulations: int = 100) -> PolicyResult:
    """statmux's search (statmux.placement.statmux_search)."""
    search = StatmuxSearch(problem)
    return PolicyResult(search.run(refine_simulations))


# ---------------------------------------------------------------------------- manual
def manual_policy(problem: SearchProblem, groups: list[Group]) -> PolicyResult:
    return PolicyResult(Placement([g.copy() for g in groups]))
