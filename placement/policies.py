"""The placement policies: sr, clockwork++, alpaserve, statmux and manual.

- sr: selective replication, every replica on one GPU, greedy on simulated attainment.
- clockwork++: sr re-run on every time window with the window's own arrivals and zero swap
  cost (an oracle upper bound for replication, as in the AlpaServe paper).
- alpaserve: the published AlpaServe search (statmux.placement.alpaserve): every group
  partition, its fast greedy model selection, and device separation between latency clusters.
- statmux: one demand-balanced packing per config to screen them, the component-localized
  greedy (exact, a fraction of AlpaServe's simulation cost) on the best config, per latency
  cluster for heterogeneous sets, then simulator-guided local search (replica moves, swaps
  and per-group reconfiguration, so one placement mixes group configs) within a budget of
  simulations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from statmux.placement.alpaserve import alpaserve_search
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
    """The published AlpaServe search (statmux.placement.alpaserve)."""
    found = alpaserve_search(problem, separation=split)
    notes: dict[str, object] = dict(found.notes)
    if found.split is not None:
        notes["split"] = found.split
    return PolicyResult(found.placement, notes=notes)


# ---------------------------------------------------------------------------- statmux
def statmux_policy(
    problem: SearchProblem,
    refine_simulations: int = 100,
    close: float = 0.005,
    greedy_candidates: int = 8,
    runner_up_simulations: int = 600,
    lazy: bool = False,
) -> PolicyResult:
    """Screen every config with one cheap packing each, run the localized greedy on the best
    (and on a runner-up within `close` of it, when the first greedy took fewer than
    `runner_up_simulations` simulations), then refine the winner with local search
    for `refine_simulations` simulations."""

    def screen(models: list[str], gpus: int) -> list[tuple[float, ParallelConfig]]:
        """One packing per config (one sim each), best first."""
        sub = None if models == problem.models else models
        found = []
        for cfg in _configs_up_to(problem, models, gpus):
            if all(problem.fits_alone(m, cfg) for m in models):
                p = pack(problem, uniform_groups(gpus, cfg), models)
                found.append((problem.attainment(p, sub), cfg))
        return sorted(found, key=lambda c: (-c[0], c[1]))

    def search(models: list[str], gpus: int, label: str) -> Placement | None:
        sub = None if models == problem.models else models
        ranked = screen(models, gpus)
        best: tuple[float, Placement] | None = None
        start = problem.simulations
        for screened, cfg in ranked[:2]:
            if screened < ranked[0][0] - close:
                break
            if best is not None and problem.simulations - start > runner_up_simulations:
                break  # the runner-up is only worth a second greedy when greedy is cheap
            p = greedy_select(
                problem, uniform_groups(gpus, cfg), models, candidates=greedy_candidates, lazy=lazy
            )
            p = pack(problem, p.groups, models, fill=False)  # models the greedy left out
            att = problem.attainment(p, sub)
            problem.say(f"{label}: {p.describe()} → {att:.4f}")
            if best is None or att > best[0]:
                best = (att, p)
        return None if best is None else best[1]

    candidates: list[Placement] = []
    clusters = latency_clusters(problem)
    alloc = split_gpus(problem, clusters) if len(clusters) > 1 else None
    if alloc is None:
        whole = search(problem.models, problem.num_gpus, "statmux")
        if whole is not None:
            candidates.append(whole)
    else:
        # Heterogeneous models: the greedy runs per latency cluster (AlpaServe's device
        # splitting); the unsplit configs still compete through their packings.
        for _, cfg in screen(problem.models, problem.num_gpus)[:1]:
            candidates.append(pack(problem, uniform_groups(problem.num_gpus, cfg)))
        merged = Placement([])
        for models, gpus in zip(clusters, alloc, strict=True):
            part = search(models, gpus, f"statmux[{len(models)} models]")
            if part is not None:
                merged.groups.extend(part.groups)
        candidates.append(merged)
    if not candidates:
        groups = [Group(ParallelConfig(1, 1)) for _ in range(problem.num_gpus)]
        candidates.append(pack(problem, groups))
    scored = sorted(((problem.attainment(p), i) for i, p in enumerate(candidates)), reverse=True)
    best_att, best = scored[0][0], candidates[scored[0][1]]
    if best_att < 1.0:
        best, best_att = improve(problem, best, max_simulations=refine_simulations)
        problem.say(f"statmux local search: {best.describe()} → {best_att:.4f}")
    return PolicyResult(best)


def _missed(problem: SearchProblem, placement: Placement, models: list[str]) -> dict[str, float]:
    sub = None if models == problem.models else models
    good = problem.simulator(sub).good_per_model(placement)
    problem.simulations += 1
    totals = request_counts(problem.workload)
    names = problem.workload.model_names
    return {m: float(totals[names.index(m)] - good[names.index(m)]) for m in models}


# ---------------------------------------------------------------------------- manual
def manual_policy(problem: SearchProblem, groups: list[Group]) -> PolicyResult:
    return PolicyResult(Placement([g.copy() for g in groups]))
