"""AlpaServe's placement search as published (OSDI'23, alpa-projects/mms), on statmux's
simulator: the `alpaserve` baseline.

It follows the published implementation (`ModelParallelismSearch` with device separation,
the "mp-search-sep" policy of the paper's artifact, and its `replica_placement_fast_greedy`):

1. Group partitions: for every power-of-two group size s ≤ N GPUs (sizes above gpusPerNode
   only as multiples of it) and every (pp, tp) with pp·tp = s, pp ≤ 8 and tp ≤ 4: ⌊N/s⌋
   groups of (pp, tp); the N mod s leftover GPUs form pipeline-only groups, one per bit of
   the binary decomposition of N mod s.
2. Greedy model selection on each partition: simulate the placement; rank the models by
   unserved requests (most first) and the groups by the requests routed to them (fewest
   first); add the first (group, model) pair whose model is not on the group yet and fits in
   the group's memory. The stopping rule is the published one: stop when no pair fits, that
   is when memory is full. One simulation per replica added.
3. The partition whose placement simulates best wins.
4. Device separation: the models are clustered by single-GPU latency (a model joins the
   first cluster whose first model's latency is within 38 % of its own); every split of the
   GPUs between the clusters (each ≥ 1 GPU; splits that would cut an 8-GPU node unevenly are
   skipped, as published) is a candidate; candidates are pruned by the largest gap between a
   cluster's share of the request rate and its share of the throughput (GPUs / latency),
   with thresholds 1, .5, .3, .2, .1 until fewer than 100 remain. Each cluster is solved by
   1–3 on its GPUs and its own requests; the best split competes with the unsplit solution.

Differences from the published code, none of which changes the answer: a (cluster, GPU
count) sub-problem that several splits share is solved once (cached); a partition on which no
model of the cluster has a profile is skipped instead of simulated empty; the score is the
simulated attainment (the published score is goodput, with 1e-4-scale tie-breaks on mean
latency and replica count); searches run on the given workload (the published code
generates a Gamma training workload from each model's rate and CV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem, request_counts

MAX_PP = 8
MAX_TP = 4
SAME_CLUSTER = 0.38  # relative single-GPU latency difference within one cluster
MAX_SPLITS = 100
PRUNE_THRESHOLDS = (1.0, 0.5, 0.3, 0.2, 0.1)


@dataclass
class AlpaServeResult:
    placement: Placement
    split: list[int] | None = None  # GPUs per latency cluster, when separation won
    candidates: int = 0  # partitions greedily filled
    splits: int = 0  # device separations scored
    notes: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- partitions
def powers_of_two_up_to(n: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= n:
        sizes.append(sizes[-1] * 2)
    return sizes


def binary_parts(n: int) -> list[int]:
    """The powers of two that sum to n, smallest first (13 -> 1, 4, 8)."""
    return [1 << i for i in range(n.bit_length()) if n >> i & 1]


def group_partitions(num_gpus: int, gpus_per_node: int) -> list[list[Group]]:
    """Every published group partition of `num_gpus` GPUs (empty groups)."""
    out: list[list[Group]] = []
    for size in powers_of_two_up_to(num_gpus):
        if size > gpus_per_node and size % gpus_per_node:
            continue
        regular, rest = divmod(num_gpus, size)
        for pp in (d for d in range(1, size + 1) if size % d == 0):
            tp = size // pp
            if pp > MAX_PP or tp > MAX_TP:
                continue
            groups = [Group(ParallelConfig(pp, tp)) for _ in range(regular)]
            groups += [Group(ParallelConfig(s, 1)) for s in binary_parts(rest)]
            out.append(groups)
    return out


# ---------------------------------------------------------------------------- greedy
def fast_greedy(problem: SearchProblem, groups: list[Group], models: list[str]) -> Placement:
    """The published greedy model selection (one simulation per replica added)."""
    sim = problem.simulator(None if models == problem.models else models)
    names = problem.workload.model_names
    idx = np.array([names.index(m) for m in models])
    totals = request_counts(problem.workload)[idx]
    placement = Placement([g.copy() for g in groups])
    used = [sum(problem.bytes_per_gpu(m, g.config) for m in g.models) for g in placement.groups]
    while True:
        good, routed = sim.good_and_routed(placement)
        problem.simulations += 1
        unserved = totals - good[idx]
        # most unserved first (ties: later model first, as argsort()[::-1] does)
        model_order = [models[i] for i in np.argsort(unserved, kind="stable")[::-1]]
        found = False
        for gi in np.argsort(routed, kind="stable"):
            g = placement.groups[gi]
            for m in model_order:
                need = problem.bytes_per_gpu(m, g.config)
                if m not in g.models and used[gi] + need <= problem.budget:
                    g.models.append(m)
                    used[gi] += need
                    found = True
                    break
            if found:
                break
        if not found:
            return placement


def solve_one(problem: SearchProblem, models: list[str], gpus: int) -> tuple[Placement, float]:
    """Steps 1-3 for `models` on `gpus` GPUs: the best greedily filled partition."""
    sub = None if models == problem.models else models
    profiled = {c for m in models for c in problem.profiles[m].configs}
    best: tuple[Placement, float] | None = None
    for groups in group_partitions(gpus, problem.gpus_per_node):
        if not any(g.config in profiled for g in groups):
            continue
        placement = fast_greedy(problem, groups, models)
        att = problem.attainment(placement, sub)
        problem.say(f"alpaserve: {placement.describe()} → {att:.4f}")
        if best is None or att > best[1]:
            best = (placement, att)
    if best is None:  # no partition any model has a profile for: nothing can be served
        return Placement([]), 0.0
    return best


# ---------------------------------------------------------------------------- separation
def latency_clusters(problem: SearchProblem) -> list[list[str]]:
    """Models clustered by single-GPU latency, in input order (the published rule)."""
    clusters: list[list[str]] = []
    for m in problem.models:
        lat = problem.profiles[m].single_device_latency
        for c in clusters:
            base = problem.profiles[c[0]].single_device_latency
            if abs(lat - base) / base < SAME_CLUSTER:
                c.append(m)
                break
        else:
            clusters.append([m])
    return clusters


def _valid_part(n: int, i: int, node: int) -> bool:
    """The published rule: a part may not cut a full node unevenly."""
    return i <= n % node or (n - i) % node == 0 or n % node == 0


def gpu_splits(n: int, k: int, node: int = 8) -> list[list[int]]:
    """Every way to give k clusters ≥ 1 GPU each, n in total (the published enumeration)."""
    if k == 1:
        return [[n]]
    out: list[list[int]] = []
    for i in range(1, n):
        if _valid_part(n, i, node):
            out += [[*rest, i] for rest in gpu_splits(n - i, k - 1, node)]
    return out


def pruned_splits(
    problem: SearchProblem, clusters: list[list[str]], splits: list[list[int]]
) -> list[list[int]]:
    rates = problem.rates
    share = np.array([sum(rates.get(m, 0.0) for m in c) for c in clusters])
    share = share / max(share.sum(), 1e-12)
    latency = np.array([problem.profiles[c[0]].single_device_latency for c in clusters])
    kept: list[list[int]] = []
    for threshold in PRUNE_THRESHOLDS:
        kept = []
        for split in splits:
            throughput = np.array(split) / latency
            if np.max(np.abs(share - throughput / throughput.sum())) < threshold:
                kept.append(split)
        if len(kept) < MAX_SPLITS:
            break
    return kept


def alpaserve_search(problem: SearchProblem, separation: bool = True) -> AlpaServeResult:
    """The published search: unsplit, then (for several latency clusters) every pruned split."""
    before = problem.simulations
    best, best_att = solve_one(problem, problem.models, problem.num_gpus)
    result = AlpaServeResult(best)
    clusters = latency_clusters(problem) if separation else [problem.models]
    if len(clusters) > 1:
        splits = pruned_splits(
            problem, clusters, gpu_splits(problem.num_gpus, len(clusters), problem.gpus_per_node)
        )
        solved: dict[tuple[int, int], Placement] = {}
        for split in splits:
            merged = Placement([])
            for ci, (models, gpus) in enumerate(zip(clusters, split, strict=True)):
                if (ci, gpus) not in solved:
                    solved[(ci, gpus)] = solve_one(problem, models, gpus)[0]
                merged.groups.extend(g.copy() for g in solved[(ci, gpus)].groups)
            att = problem.attainment(merged)
            problem.say(f"alpaserve split {split}: {merged.describe()} → {att:.4f}")
            if att > best_att + 1e-12:
                best, best_att = merged, att
                result.split = list(split)
        result.placement = best
        result.splits = len(splits)
        result.notes["clusters"] = [len(c) for c in clusters]
    result.notes["simulations"] = problem.simulations - before
    return result
