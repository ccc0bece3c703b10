"""statmux's placement search: AlpaServe's space, searched where it matters, then refined.

1. Candidates: AlpaServe's group partitions (every group size, pp ≤ 8, tp ≤ 4, leftovers as
   pipeline-only groups) plus one uniform partition per other profiled (pp, tp) (tp 8, pp 16).
   Partitions are not required to hold every model: under tight memory a partition on which
   only some models fit can still be the best (issue 10: the old screen skipped them and
   placed 2 of 8 models at 1 GiB).
2. Screen: each partition gets one demand-balanced packing (packing.py) and one simulation;
   when no partition can hold every model once, also a packing in knapsack order
   (requests per weight byte), the better counts.
3. Fill: the best partitions (up to `top`, within `close` of the best screen: a packing
   misranks partitions by about a point under tight memory; for a single latency cluster
   only while the search has simulated under `work_share` of the requests AlpaServe's search
   would, estimated from the first fill) get AlpaServe's fast greedy
   (one simulation per replica, memory filled) and the simulator-scored component greedy
   (greedy.py: the best of the 4 neediest models' replicas per step, lazily re-evaluated)
   followed by a memory fill; the best placement wins. The component greedy is what wins
   on bursty and tight-SLO sets.
4. Heterogeneous sets: the GPUs are split between AlpaServe's latency clusters. Every
   pruned split (AlpaServe's enumeration) and the demand-proportional split is screened by
   merging each cluster's best screened packing (cached per cluster and GPU count, one
   simulation per split); the `top_splits` best get step 3 per cluster.
5. The best candidate on the whole workload is refined by local search (local_search.py)
   for a tenth of AlpaServe's estimated simulation count (at most 100 simulations).

Every simulation of steps 2–4 runs on the cluster's own requests; a (cluster, GPU count)
sub-problem is solved once.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from statmux.placement.search_space import SearchProblem, uniform_groups


@dataclass
class Found:
    placement: Placement
    attainment: float  # on the sub-problem's requests
    label: str


def partitions(problem: SearchProblem, models: list[str], gpus: int) -> list[list[Group]]:
    """AlpaServe's partitions plus a uniform one per other profiled config that fits."""
    out = group_partitions(gpus, problem.gpus_per_node)
    profiled = {c for m in models for c in problem.profiles[m].configs}
    seen = {tuple(g.config for g in p) for p in out}
    for cfg in sorted(profiled):
        if cfg.gpus <= gpus and (cfg.gpus <= problem.gpus_per_node or cfg.gpus == gpus):
            groups = uniform_groups(gpus, cfg)
            key = tuple(g.config for g in groups)
            if key not in seen:
                seen.add(key)
                out.append(groups)
    return [p for p in out if any(g.config in profiled for g in p)]


class StatmuxSearch:
    def __init__(
        self,
        problem: SearchProblem,
        top: int = 4,
        close: float = 0.02,
        top_splits: int = 2,
        component: bool = True,
        candidates: int = 4,
        lazy: bool = True,
    ) -> None:
        self.candidates = candidates
        self.lazy = lazy
        self.problem = problem
        self.top = top
        self.close = close
        self.component = component
        self.top_splits = top_splits
        self._screened: dict[tuple[tuple[str, ...], int], list[Found]] = {}
        self._solved: dict[tuple[tuple[str, ...], int], Found] = {}
        # AlpaServe's cost on the unsplit problem, estimated as partitions x greedy steps
        # (simulations) and x the requests of each (simulated requests): the local search
        # gets a tenth of the simulations, and the unsplit search stops adding partitions
        # once it has simulated `work_share` of AlpaServe's requests.
        self._alpaserve_cost = 0
        self._alpaserve_work = 0
        self.work_share = 0.4
        self._clusters = latency_clusters(problem)

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

    def solve(self, models: list[str], gpus: int) -> Found:
        """Steps 2-3 for `models` on `gpus` GPUs (cached)."""
        key = (tuple(models), gpus)
        if key in self._solved:
            return self._solved[key]
        problem, sub = self.problem, self._sub(models)
        ranked = self.screen(models, gpus)
        best = ranked[0] if ranked else Found(Placement([]), 0.0, "empty")
        near = [f for f in ranked[: self.top] if f.attainment >= ranked[0].attainment - self.close]
        work = problem.simulator().work
        # AlpaServe spends its time on the unsplit problem only when there is one cluster
        whole = models == problem.models and len(self._clusters) == 1
        start_work = work[0]
        for i, screened in enumerate(near):
            if whole and i > 0:
                per_partition = (work[0] - start_work) / i
                if work[0] + per_partition > self.work_share * self._alpaserve_work:
                    break
            empty = [Group(g.config) for g in screened.placement.groups]
            before, before_work = problem.simulations, work[0]
            tries = [fast_greedy(problem, empty, models)]
            if models == problem.models and i == 0:
                self._alpaserve_cost = len(ranked) * (problem.simulations - before)
                self._alpaserve_work = len(ranked) * (work[0] - before_work)
            if self.component:
                greedy = greedy_select(
                    problem, empty, models, candidates=self.candidates, lazy=self.lazy
                )
                tries.append(pack(problem, greedy.groups, models))  # fill memory
            for p in tries:
                att = problem.attainment(p, sub)
                if att > best.attainment + 1e-12:
                    best = Found(p, att, p.describe())
        problem.say(
            f"statmux[{len(models)} models, {gpus} GPUs]: {best.label} → {best.attainment:.4f}"
        )
        self._solved[key] = best
        return best

    def splits(self, clusters: list[list[str]]) -> list[list[int]]:
        """AlpaServe's pruned splits plus the demand-proportional one, that hold every
        cluster's screen."""
        problem = self.problem
        found = pruned_splits(
            problem, clusters, gpu_splits(problem.num_gpus, len(clusters), problem.gpus_per_node)
        )
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
        candidates = [self.solve(problem.models, problem.num_gpus).placement]
        clusters = self._clusters
        if len(clusters) > 1:
            for split in self.splits(clusters):
                merged = Placement([])
                for models, gpus in zip(clusters, split, strict=True):
                    merged.groups.extend(
                        g.copy() for g in self.solve(models, gpus).placement.groups
                    )
                candidates.append(merged)
        evaluator = problem.evaluator()
        scored = [(evaluator.attainment(p), i) for i, p in enumerate(candidates)]
        problem.simulations += len(scored)
        best_att, best_i = max(scored)
        best = candidates[best_i]
        budget = min(refine_simulations, max(10, self._alpaserve_cost // 10))
        if best_att < 1.0:
            best, _ = improve(problem, best, max_simulations=budget)
            problem.say(f"statmux local search: {best.describe()}")
        return best
