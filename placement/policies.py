"""The placement policies: sr, clockwork++, alpaserve, statmux and manual.

- sr: selective replication, every replica on one GPU, greedy on simulated attainment.
- clockwork++: sr re-run on every time window with the window's own arrivals and zero swap
  cost (an oracle upper bound for replication, as in the AlpaServe paper).
- alpaserve: for every group size and (pp, tp), greedy model selection on equal groups; with
  heterogeneous models the GPUs are first split between latency clusters.
- statmux: demand-balanced packing for every config and for the cluster split, then
  simulator-guided local search (replica moves, swaps and per-group reconfiguration, so one
  placement mixes group configs) on the best candidates, within a time budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from statmux.placement.greedy import greedy_select
from statmux.placement.local_search import improve
from statmux.placement.packing import pack
from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import (
    GROUP_SIZES,
    Deadline,
    SearchProblem,
    configs_of_size,
    request_counts,
    uniform_groups,
)


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
def _configs_up_to(problem: SearchProblem, models: list[str], gpus: int) -> list[ParallelConfig]:
    out: list[ParallelConfig] = []
    for size in GROUP_SIZES:
        if size <= gpus:
            out.extend(configs_of_size(size, (problem.profiles[m] for m in models)))
    return out


def _best_uniform(
    problem: SearchProblem,
    models: list[str],
    gpus: int,
    build: Callable[[list[Group], list[str]], Placement],
    label: str,
) -> tuple[Placement, float]:
    sub = None if models == problem.models else models
    best: tuple[Placement, float] | None = None
    for cfg in _configs_up_to(problem, models, gpus):
        if not all(problem.fits_alone(m, cfg) for m in models):
            continue
        placement = build(uniform_groups(gpus, cfg), models)
        att = problem.attainment(placement, sub)
        problem.say(f"{label}: {placement.describe()} → {att:.4f}")
        if best is None or att > best[1]:
            best = (placement, att)
    if best is None:
        # Some model fits no config on its own: place what fits on single GPUs.
        placement = build([Group(ParallelConfig(1, 1)) for _ in range(gpus)], models)
        best = (placement, problem.attainment(placement, sub))
    return best


def alpaserve_policy(problem: SearchProblem, split: bool = True) -> PolicyResult:
    def build(groups: list[Group], models: list[str]) -> Placement:
        return greedy_select(problem, groups, models)

    clusters = latency_clusters(problem) if split else [problem.models]
    alloc = split_gpus(problem, clusters) if len(clusters) > 1 else None
    if alloc is None:
        placement, _ = _best_uniform(problem, problem.models, problem.num_gpus, build, "alpaserve")
        return PolicyResult(placement)
    merged = Placement([])
    for models, gpus in zip(clusters, alloc, strict=True):
        part, _ = _best_uniform(problem, models, gpus, build, f"alpaserve[{len(models)} models]")
        merged.groups.extend(part.groups)
    return PolicyResult(merged, notes={"split": alloc})


# ---------------------------------------------------------------------------- statmux
def statmux_policy(problem: SearchProblem, seconds: float = 1.0, beam: int = 2) -> PolicyResult:
    deadline = Deadline(seconds)
    candidates: list[tuple[float, Placement]] = []

    def screen(models: list[str], gpus: int, label: str) -> list[tuple[float, Placement]]:
        """Packing (filled and one replica each) for every config: cheap, one sim each."""
        sub = None if models == problem.models else models
        found: list[tuple[float, Placement]] = []
        for cfg in _configs_up_to(problem, models, gpus):
            if not all(problem.fits_alone(m, cfg) for m in models):
                continue
            for fill in (True, False):
                p = pack(problem, uniform_groups(gpus, cfg), models, fill=fill)
                found.append((problem.attainment(p, sub), p))
        found.sort(key=lambda c: -c[0])
        if found:
            problem.say(f"{label}: best {found[0][1].describe()} → {found[0][0]:.4f}")
        return found

    candidates += screen(problem.models, problem.num_gpus, "statmux")
    clusters = latency_clusters(problem)
    alloc = split_gpus(problem, clusters) if len(clusters) > 1 else None
    if alloc is not None:
        merged = Placement([])
        for models, gpus in zip(clusters, alloc, strict=True):
            part = screen(models, gpus, f"statmux[{len(models)} models]")
            if part:
                merged.groups.extend(part[0][1].groups)
        candidates.append((problem.attainment(merged), merged))
    if not candidates:
        groups = [Group(ParallelConfig(1, 1)) for _ in range(problem.num_gpus)]
        p = pack(problem, groups)
        candidates.append((problem.attainment(p), p))
    candidates.sort(key=lambda c: -c[0])
    best_att, best = candidates[0]
    # Refine the few best distinct candidates, sharing what is left of the time budget.
    seen: set[str] = set()
    tops = []
    for att, p in candidates:
        key = repr(sorted((g.config, tuple(sorted(g.models))) for g in p.groups))
        if key not in seen:
            seen.add(key)
            tops.append((att, p))
        if len(tops) == beam:
            break
    for i, (_att, p) in enumerate(tops):
        if best_att >= 1.0:
            break
        share = Deadline(deadline.left() / (len(tops) - i))
        refined, refined_att = improve(problem, p, share)
        problem.say(f"statmux local search: {refined.describe()} → {refined_att:.4f}")
        if refined_att > best_att:
            best, best_att = refined, refined_att
    return PolicyResult(best)


# ---------------------------------------------------------------------------- manual
def manual_policy(problem: SearchProblem, groups: list[Group]) -> PolicyResult:
    return PolicyResult(Placement([g.copy() for g in groups]))


def unplaced_models(problem: SearchProblem, placement: Placement) -> list[str]:
    counts = request_counts(problem.workload)
    names = problem.workload.model_names
    return [m for m in problem.models if placement.replicas(m) == 0 and counts[names.index(m)] > 0]
