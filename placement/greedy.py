"""Simulator-driven greedy model selection (AlpaServe's Algorithm 1, pruned and localized).

Start from the given (usually empty) groups and repeatedly add the one replica that raises
simulated SLO attainment the most. AlpaServe tries every (model, group) pair per step; we try
the `candidates` models with the most missed requests, each on its least-loaded group with
room, which picks the same replica in the common case at a fraction of the simulations.

Adding model m to group g can only change the outcome of requests whose models share a group
with m or g, transitively (routing never leaves the groups hosting a request's model). So a
candidate is scored by simulating just that connected component after the move (the counts
before it are the greedy's running ones): the attainment change is exact and the simulation
touches a fraction of the requests.
"""

from __future__ import annotations

import numpy as np

from statmux.placement.plan import Group, Placement
from statmux.placement.search_space import Deadline, SearchProblem, request_counts


def greedy_select(
    problem: SearchProblem,
    groups: list[Group],
    models: list[str] | None = None,
    candidates: int = 8,
    deadline: Deadline | None = None,
    lazy: bool = False,
    max_work: int | None = None,
) -> Placement:
    """max_work: stop once the problem's simulators have simulated this many requests in
    all (a budget that does not depend on machine load, so results are reproducible).
    lazy: skip a candidate whose gain at its last evaluation is below the best gain found
    in this step (gains rarely grow as the placement fills), as in lazy greedy for
    submodular maximization; cuts late-phase simulations several-fold."""
    models = list(problem.models if models is None else models)
    sub = None if models == problem.models else models
    placement = Placement([g.copy() for g in groups])
    names = problem.workload.model_names
    index = {m: names.index(m) for m in models}
    rows = np.array([index[m] for m in models], dtype=np.int64)
    totals = request_counts(problem.workload)
    scorer = ComponentScorer(problem)
    last_gain: dict[str, int] = {}
    good = problem.simulator(sub).good_per_model(placement).copy()
    problem.simulations += 1
    # `good` stands for the 'before' counts of a component only if the simulator over `models`
    # sees every request of the models placed (none from outside the set)
    known = all(m in index for g in placement.groups for m in g.models)
    work = problem.simulator().work  # requests simulated so far, shared by every simulator
    while (deadline is None or not deadline.expired()) and (max_work is None or work[0] < max_work):
        missed = sorted(
            zip((totals[rows] - good[rows]).tolist(), models, strict=True), reverse=True
        )
        best: tuple[int, int, str, np.ndarray] | None = None  # (gain, -group, model, good)
        shortlist: list[tuple[str, int]] = []
        room = GroupLoads(problem, placement)  # once per step, not per candidate
        for miss, m in missed:
            if len(shortlist) >= candidates or miss <= 0:
                break
            gi = room.least_loaded(m)
            if gi is not None:
                shortlist.append((m, gi))
        if lazy:
            shortlist.sort(key=lambda c: -last_gain.get(c[0], 1 << 62))
        for m, gi in shortlist:
            if lazy and best is not None and last_gain.get(m, 1 << 62) < best[0]:
                continue
            gain, after = scorer.gain(placement, m, gi, good if known else None)
            last_gain[m] = gain
            if best is None or (gain, -gi) > best[:2]:
                best = (gain, -gi, m, after)
        if best is None or best[0] <= 0:
            break
        placement.groups[-best[1]].models.append(best[2])
        # The component's new per-model counts are exact: no full re-simulation needed.
        touched = best[3] >= 0
        good[touched] = best[3][touched]
    return placement


class ComponentScorer:
    """Exact attainment change of adding one replica, by simulating its component only."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self._index: dict[str, int] | None = None
        self._good: dict[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], np.ndarray] = {}

    def gain(
        self,
        placement: Placement,
        model: str,
        group_index: int,
        good: np.ndarray | None = None,
    ) -> tuple[int, np.ndarray]:
        """Good requests gained, and the component's per-model good counts afterwards
        (-1 for models outside the component).

        good: the placement's per-model good counts, when the caller knows them. The
        component before the move is a union of closed components (no model in it shares a
        group outside it), so its models' counts in the full simulation are exactly those
        of simulating it alone: the 'before' simulation is then skipped."""
        comp_groups, comp_models = component(
            placement, {model} | set(placement.groups[group_index].models)
        )
        after = Placement(
            [
                Group(g.config, [*g.models, model]) if i == group_index else g.copy()
                for i, g in ((i, placement.groups[i]) for i in sorted(comp_groups | {group_index}))
            ]
        )
        good_after = self._good_of(after, comp_models)
        mask = self._mask(comp_models, len(good_after))
        if good is None:
            before = Placement([placement.groups[i].copy() for i in sorted(comp_groups)])
            good = self._good_of(before, comp_models)
        gain = int(good_after[mask].sum() - good[mask].sum())
        return gain, np.where(mask, good_after, -1)

    def _mask(self, models: set[str], n: int) -> np.ndarray:
        if self._index is None:
            self._index = {m: i for i, m in enumerate(self.problem.workload.model_names)}
        mask = np.zeros(n, dtype=bool)
        mask[[self._index[m] for m in models]] = True
        return mask

    def _good_of(self, placement: Placement, models: set[str]) -> np.ndarray:
        key = (
            tuple(sorted(models)),
            tuple(sorted((*tuple(sorted(g.models)), str(g.config)) for g in placement.groups)),
        )
        cached = self._good.get(key)
        if cached is None:
            self.problem.simulations += 1
            sim = self.problem.simulator(sorted(models))
            cached = sim.good_per_model(placement)
            if len(self._good) > 4096:
                self._good.clear()
            self._good[key] = cached
        return cached


def component(placement: Placement, seed_models: set[str]) -> tuple[set[int], set[str]]:
    """Groups and models connected to `seed_models` through shared groups."""
    models = set(seed_models)
    groups: set[int] = set()
    frontier = list(models)
    while frontier:
        m = frontier.pop()
        for gi, g in enumerate(placement.groups):
            if gi not in groups and m in g.models:
                groups.add(gi)
                for x in g.models:
                    if x not in models:
                        models.add(x)
                        frontier.append(x)
    return groups, models


class GroupLoads:
    """Each group's memory in use and the bottleneck load its models bring (their demand
    on the group's config, shared among their replicas), computed once for a placement."""

    def __init__(self, problem: SearchProblem, placement: Placement) -> None:
        self.problem = problem
        self.placement = placement
        replicas: dict[str, int] = {}
        for g in placement.groups:
            for m in g.models:
                replicas[m] = replicas.get(m, 0) + 1
        # per-config columns (demand, bytes) by model name: no (model, config) hashing
        self.columns = [problem.per_model(g.config) for g in placement.groups]
        self.used = [
            sum(col[1][m] for m in g.models)
            for g, col in zip(placement.groups, self.columns, strict=True)
        ]
        self.load = [
            sum(col[0][m] / replicas[m] for m in g.models)
            for g, col in zip(placement.groups, self.columns, strict=True)
        ]

    def least_loaded(self, model: str) -> int | None:
        """The group with room for `model` whose hosted models bring the least load."""
        budget = self.problem.budget
        best, best_load = -1, 0.0
        for gi, g in enumerate(self.placement.groups):
            if self.used[gi] + self.columns[gi][1][model] > budget or model in g.models:
                continue
            if best < 0 or self.load[gi] < best_load:
                best, best_load = gi, self.load[gi]
        return None if best < 0 else best


def least_loaded_group(problem: SearchProblem, placement: Placement, model: str) -> int | None:
    """The group with room for `model` whose hosted models bring the least bottleneck load."""
    return GroupLoads(problem, placement).least_loaded(model)
