"""statmux's placement search: AlpaServe's space, searched where it matters, then refined.

1. Candidates: AlpaServe's group partitions (every group size, pp ≤ 8, tp ≤ 4, leftovers as
   pipeline-only groups) plus one uniform partition per other profiled (pp, tp) (tp 8, pp 16).
   Partitions are not required to hold every model: under tight memory a partition on which
   only some models fit can still be the best (issue 10: the old screen skipped them and
   placed 2 of 8 models at 1 GiB).
2. Screen: each partition gets one demand-balanced packing (packing.py) and one simulation;
   when no partition can hold every model once, also a packing in knapsack order
   (requests per weight byte), the better counts. The packings fill memory, so their
   replica counts also estimate AlpaServe's cost (its greedy simulates once per replica
   until memory is full, on every partition) without running it.
3. Fill: the best partitions (up to `top`, within `close` of the best screen: a packing
   misranks partitions by about a point under tight memory) get the simulator-scored
   component greedy (greedy.py: the best of the 4 neediest models' replicas per step, each
   scored exactly by simulating its connected component, lazily re-evaluated) followed by a
   memory fill: the first `top_component` of them on the unsplit problem, the first
   `top_component_split` on a cluster's. With several latency clusters the unsplit problem's
   partitions also get AlpaServe's fast greedy (on the demo at 6 GiB it alone finds the
   best placement, on the 4th partition). With one cluster AlpaServe's whole search is
   this sub-problem: the best screened partition gets AlpaServe's fast greedy (1/P of its
   cost; where that partition is AlpaServe's best too, statmux has its answer), and the
   component greedy runs only until the search has simulated `fill_share` of the requests
   AlpaServe's would (it is anytime: it stops mid-way, then memory is filled), so that
   homogeneous sets take under half its time.
4. Heterogeneous sets: the GPUs are split between AlpaServe's latency clusters. AlpaServe's
   pruned splits (its enumeration), at most `max_screen` of them (the closest to its
   balance rule: rate share vs throughput share; 5 pick the same splits as 20 on the
   benchmark settings and pay for the second GPU count below), are screened by merging each
   cluster's best screened packing (cached per cluster and GPU count, one simulation per
   split); the `top_splits` best get step 3 per cluster.
5. The best candidate on the whole workload is refined by local search (local_search.py),
   scored on the whole workload even when steps 1-4 searched a sample (maxRequests), for
   `refine_share` of AlpaServe's estimated simulation count (10 to 100 simulations).

Monotone in GPUs (issue 10): the unsplit problem also runs steps 2-3 for the `carry` smaller
GPU counts, their extra GPUs idle, and step 5 refines the best candidate of each count with
that count's own budget. With several latency clusters every count's fills are exactly those
of its own run (no shared budget), so an independent run on N + 1 GPUs has every unsplit
candidate of the run on N, refined alike: it can only fall below N when N's answer came
from a split or from N − 1 (two steps down in a row). With one cluster the counts'
partitions are ranked together under one budget (monotone on the benchmark settings, not
by construction), and the smaller count is skipped when this count's screen alone used the
fill budget (memory so tight that every partition is packed twice). Partitions are kept
once per multiset of group configs.

Every simulation of steps 2–4 runs on the cluster's own requests; a (cluster, GPU count)
sub-problem is solved once. Every budget counts simulations or simulated requests, never
seconds, so the search is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statmux.placement.alpaserve import (
    fast_greedy,
    gpu_splits,
    group_partitions,
    latency_clusters,
    pruned_splits,
)
from statmux.placement.greedy import greedy_select
from statmux.placement.local_search import improve
from statmux.placement.packing import pack
from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem, uniform_groups


@dataclass
class Found:
    placement: Placement
    attainment: float  # on the sub-problem's requests
    label: str


def partitions(problem: SearchProblem, models: list[str], gpus: int) -> list[list[Group]]:
    """AlpaServe's partitions plus a uniform one per other profiled config that fits."""
    profiled = {c for m in models for c in problem.profiles[m].configs}
    out: list[list[Group]] = []
    seen: set[tuple[ParallelConfig, ...]] = set()
    uniform = [
        uniform_groups(gpus, cfg)
        for cfg in sorted(profiled)
        if cfg.gpus <= gpus and (cfg.gpus <= problem.gpus_per_node or cfg.gpus == gpus)
    ]
    for groups in (*group_partitions(gpus, problem.gpus_per_node), *uniform):
        # one partition per multiset of group configs (a uniform partition often repeats
        # an AlpaServe one with its leftover groups in another order)
        key = tuple(sorted(g.config for g in groups))
        if key not in seen and any(g.config in profiled for g in groups):
            seen.add(key)
            out.append(groups)
    return out


def split_gap(problem: SearchProblem, clusters: list[list[str]], split: list[int]) -> float:
    """AlpaServe's pruning score of a split: the largest gap between a cluster's share of the
    request rate and its share of the throughput (GPUs / single-GPU latency)."""
    rates = problem.rates
    share = np.array([sum(rates.get(m, 0.0) for m in c) for c in clusters])
    share = share / max(share.sum(), 1e-12)
    latency = np.array([problem.profiles[c[0]].single_device_latency for c in clusters])
    throughput = np.array(split) / latency
    return float(np.max(np.abs(share - throughput / throughput.sum())))


class StatmuxSearch:
    def __init__(
        self,
        problem: SearchProblem,
        top: int = 4,
        close: float = 0.02,
        top_component: int = 2,
        top_component_split: int = 1,
        top_splits: int = 2,
        max_screen: int | None = 5,
        candidates: int = 4,
        lazy: bool = True,
        fill_share: float = 0.12,
        refine_share: float = 0.05,
        carry: int = 1,
    ) -> None:
        """top / close: partitions filled (the best screened, within `close` of the best;
        per GPU count when the models form several latency clusters);
        top_component: of those, how many get the component greedy on the unsplit problem
        (top_component_split: on a cluster's sub-problem); top_splits: GPU splits filled;
        max_screen: GPU splits screened (those closest to AlpaServe's balance rule);
        fill_share / refine_share: see the module docstring; carry: how many smaller GPU
        counts' candidates the whole problem keeps (monotone in GPUs, see `solve`)."""
        self.problem = problem
        self.top = top
        self.close = close
        self.top_component = top_component
        self.top_component_split = top_component_split
        self.top_splits = top_splits
        self.max_screen = max_screen
        self.candidates = candidates
        self.lazy = lazy
        self.fill_share = fill_share
        self.refine_share = refine_share
        self.carry = carry
        self._screened: dict[tuple[tuple[str, ...], int], list[Found]] = {}
        self._solved: dict[tuple[tuple[str, ...], int], Found] = {}
        self._found: dict[tuple[tuple[str, ...], int], list[Found]] = {}
        # AlpaServe's cost on the unsplit problem, estimated from the screen (see
        # _estimate_alpaserve): in simulations and in simulated requests
        self._alpaserve_cost = 0
        self._alpaserve_work = 0
        self._clusters = latency_clusters(problem)
        self._work0 = problem.simulator().work[0]

    def _sub(self, models: list[str]) -> list[str] | None:
        return None if models == self.problem.models else models

    def screen(self, models: list[str], gpus: int) -> list[Found]:
        """One packing per partition, best first (cached)."""
        key = (tuple(models), gpus)
        if key not in self._screened:
            found = []
            for groups in partitions(self.problem, models, gpus):
                p = pack(self.problem, groups, models)
                found.append(Found(p, self.problem.attainment(p, self._sub(models)), ""))
            if not any(all(f.placement.replicas(m) for m in models) for f in found):
                # no partition holds every model once: also try the knapsack order
                for i, f in enumerate(found):
                    empty = [Group(g.config) for g in f.placement.groups]
                    q = pack(self.problem, empty, models, by_density=True)
                    att = self.problem.attainment(q, self._sub(models))
                    if att > f.attainment:
                        found[i] = Found(q, att, "")
            for f in found:
                f.label = f.placement.describe()
            found.sort(key=lambda f: -f.attainment)
            self._screened[key] = found
        return self._screened[key]

    def _estimate_alpaserve(self, ranked: list[Found], gpus: int) -> int:
        """AlpaServe's cost (simulations) on the unsplit problem on `gpus` GPUs: its greedy
        simulates once per replica until memory is full, on each of its partitions; the
        screen's packings fill memory too, so their replica counts estimate its steps (no
        simulation needed)."""
        problem = self.problem
        published = {
            tuple(g.config for g in p) for p in group_partitions(gpus, problem.gpus_per_node)
        }
        return sum(
            sum(len(g.models) for g in f.placement.groups) + 2
            for f in ranked
            if tuple(g.config for g in f.placement.groups) in published
        )

    def fill(
        self, models: list[str], near: list[Found], limit: int | None, components: int
    ) -> list[Found]:
        """Step 3 on the `near` partitions: the component greedy (then a memory fill) on the
        first `components`, AlpaServe's fast greedy on each when the whole problem has several
        latency clusters; stops once `limit` requests have been simulated."""
        problem, sub = self.problem, self._sub(models)
        whole = models == problem.models
        work = problem.simulator().work
        out: list[Found] = []
        for i, screened in enumerate(near):
            if limit is not None and work[0] >= limit:
                break
            empty = [Group(g.config) for g in screened.placement.groups]
            tries = []
            if i < components:
                greedy = greedy_select(
                    problem,
                    empty,
                    models,
                    candidates=self.candidates,
                    lazy=self.lazy,
                    max_work=limit,
                )
                tries.append(pack(problem, greedy.groups, models))  # fill memory
            if whole and len(self._clusters) > 1:
                tries.append(fast_greedy(problem, empty, models))
            out += [Found(p, problem.attainment(p, sub), p.describe()) for p in tries]
        return out

    def near(self, ranked: list[Found], top: int) -> list[Found]:
        """The `top` best screened partitions within `close` of the best."""
        return [f for f in ranked[:top] if f.attainment >= ranked[0].attainment - self.close]

    def solve(self, models: list[str], gpus: int) -> Found:
        """Steps 2-3 for `models` on `gpus` GPUs (cached).

        On the whole problem, the `carry` smaller GPU counts are searched here too, their
        extra GPUs idle: an independent run on one more GPU then still has the candidates
        that won on this count (see "Monotone in resources" in docs/placement.md)."""
        key = (tuple(models), gpus)
        if key in self._solved:
            return self._solved[key]
        problem, sub = self.problem, self._sub(models)
        whole = models == problem.models
        ranked = self.screen(models, gpus)
        counts = [gpus]
        if whole:
            self._alpaserve_cost = self._estimate_alpaserve(ranked, gpus)
            self._alpaserve_work = self._alpaserve_cost * len(problem.simulator())
            carry = self.carry
            if len(self._clusters) == 1 and (
                problem.simulator().work[0] - self._work0 >= self.fill_share * self._alpaserve_work
            ):
                # one cluster, and this count's screen alone used the whole fill budget
                # (memory so tight that every partition is packed twice): a second screen
                # would cost more than half of AlpaServe's search; no carry
                carry = 0
            counts += list(range(gpus - 1, max(gpus - carry, 1) - 1, -1))
        before = problem.simulator().work[0]
        screens = [ranked, *(self.screen(models, k) for k in counts[1:])]
        carried_work = problem.simulator().work[0] - before
        found = [r[0] for r in screens if r]
        if whole and len(self._clusters) == 1:
            # A single latency cluster: AlpaServe's whole search is this sub-problem, so the
            # fills get a share of its (estimated) simulated requests, the screen's included;
            # the component greedy is anytime. The smaller counts' partitions are ranked with
            # this count's (one list, one budget: on the homogeneous benchmark settings, that
            # is monotone; see benchmarks/monotone_sweep.py).
            merged = sorted((f for r in screens for f in r), key=lambda f: -f.attainment)
            near = self.near(merged, self.top)
            if near:
                # AlpaServe's own greedy on the screen's best partition (1/P of its cost):
                # where that partition is AlpaServe's best too, statmux starts from its answer
                empty = [Group(g.config) for g in near[0].placement.groups]
                p = fast_greedy(problem, empty, models)
                found.append(Found(p, problem.attainment(p, sub), p.describe()))
                # the smaller counts' screens come on top of the budget
                limit = self._work0 + carried_work + int(self.fill_share * self._alpaserve_work)
                found += self.fill(models, near, limit, self.top_component)
        elif whole:
            # Several latency clusters: each count's partitions get exactly the fills that
            # count's own run gives them (no budget), so a carried count's candidates are
            # the ones it found itself.
            for r in screens:
                if r:
                    found += self.fill(models, self.near(r, self.top), None, self.top_component)
        elif ranked:
            found += self.fill(models, self.near(ranked, self.top), None, self.top_component_split)
        best = Found(Placement([]), 0.0, "empty")
        for f in found:
            if f.attainment > best.attainment + 1e-12:
                best = f
        problem.say(
            f"statmux[{len(models)} models, {gpus} GPUs]: {best.label} → {best.attainment:.4f}"
        )
        self._solved[key] = best
        self._found[key] = found
        return best

    def splits(self, clusters: list[list[str]]) -> list[list[int]]:
        """The `top_splits` best of AlpaServe's pruned splits (at most `max_screen` screened),
        each scored by merging its clusters' best screened packings."""
        problem = self.problem
        found = pruned_splits(
            problem, clusters, gpu_splits(problem.num_gpus, len(clusters), problem.gpus_per_node)
        )
        if self.max_screen is not None and len(found) > self.max_screen:
            found = sorted(found, key=lambda sp: split_gap(problem, clusters, sp))
            found = found[: self.max_screen]
        scored: list[tuple[float, list[int]]] = []
        for split in found:
            merged = Placement([])
            for models, gpus in zip(clusters, split, strict=True):
                ranked = self.screen(models, gpus)
                if ranked:
                    merged.groups.extend(g.copy() for g in ranked[0].placement.groups)
            scored.append((problem.attainment(merged), split))
        scored.sort(key=lambda s: -s[0])
        return [s for _, s in scored[: self.top_splits]]

    def run(self, refine_simulations: int = 100) -> Placement:
        problem = self.problem
        clusters = self._clusters
        self.solve(problem.models, problem.num_gpus)
        # every filled candidate of the whole problem (this count's and the carried ones)
        candidates = [f.placement for f in self._found[(tuple(problem.models), problem.num_gpus)]]
        if len(clusters) > 1:
            for split in self.splits(clusters):
                merged = Placement([])
                for models, gpus in zip(clusters, split, strict=True):
                    merged.groups.extend(
                        g.copy() for g in self.solve(models, gpus).placement.groups
                    )
                candidates.append(merged)
        evaluator = problem.evaluator()
        # The best candidate on the whole workload per GPU count it uses, each refined as in
        # that count's own run (several latency clusters; one cluster: the best one only).
        best_of: dict[int, tuple[float, int]] = {}
        for i, p in enumerate(candidates):
            att = evaluator.attainment(p)
            problem.simulations += 1
            k = p.gpus if len(clusters) > 1 else problem.num_gpus
            if k not in best_of or att > best_of[k][0] + 1e-12:
                best_of[k] = (att, i)
        final: tuple[float, int, Placement] | None = None
        for k in sorted(best_of, reverse=True):
            att, i = best_of[k]
            p = candidates[i]
            # the budget of that count's own run, so that a carried count's refinement is
            # the one it got there
            cost = self._estimate_alpaserve(self.screen(problem.models, k), k)
            budget = min(refine_simulations, max(10, int(self.refine_share * cost)))
            if att < 1.0:
                # on the whole workload when the search ran on a sample: the sample's bursts
                # are not the trace's, and this is the last step that moves replicas
                whole = problem.on_whole_workload()
                before = whole.simulations
                p, _ = improve(whole, p, max_simulations=budget)
                if whole is not problem:
                    problem.simulations += whole.simulations - before
                att = evaluator.attainment(p)
                problem.simulations += 1
            if final is None or att > final[0] + 1e-12:
                final = (att, k, p)
        assert final is not None
        problem.say(f"statmux local search: {final[2].describe()}")
        return final[2]
