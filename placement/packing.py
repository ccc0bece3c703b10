"""Demand-balanced packing: a fast first placement of models onto given groups.

Every model first gets one replica, biggest demand first, on the least-loaded group with room.
Then the model with the highest demand per replica gets another replica, until memory is
full. Filling memory is only a fast starting point: an extra replica can also lower the
attainment (see the `drop` move in local_search.py), and the simulator-driven search then
decides which replicas stay and which models share a group.
"""

from __future__ import annotations

import heapq

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem


def pack(
    problem: SearchProblem,
    groups: list[Group],
    models: list[str] | None = None,
    fill: bool = True,
    need: dict[str, float] | None = None,
    by_density: bool = False,
) -> Placement:
    """`need` ranks models for extra replicas (default: demand); e.g. simulated misses.
    `by_density`: first replicas go to the models with the most requests per weight byte
    first (a knapsack order, for memory too tight to hold every model once)."""
    models = list(problem.models if models is None else models)
    placement = Placement([Group(g.config, list(g.models)) for g in groups])
    gs = placement.groups
    budget = problem.budget
    used = [sum(problem.bytes_per_gpu(m, g.config) for m in g.models) for g in gs]
    hosted = [set(g.models) for g in gs]
    replicas = dict.fromkeys(models, 0)
    for h in hosted:
        for m in h:
            if m in replicas:
                replicas[m] += 1
    # Demand and bytes are config-dependent: looked up once per distinct config of the
    # partition, then per (model, group) through the group's config index (this runs for
    # every partition of every screen).
    cfg_index: dict[ParallelConfig, int] = {}
    cfg_of = [cfg_index.setdefault(g.config, len(cfg_index)) for g in gs]
    columns = [problem.per_model(c) for c in cfg_index]
    demand = {m: [d[m] for d, _ in columns] for m in models}
    need_bytes = {m: [b[m] for _, b in columns] for m in models}
    load = [0.0] * len(gs)
    # the groups hosting each model: add() updates only those loads
    hosts: dict[str, list[int]] = {m: [] for m in models}
    for index, h in enumerate(hosted):
        for m in h:
            if m in hosts:
                hosts[m].append(index)
    n_groups = len(gs)

    def add(m: str, gi: int) -> None:
        r_old = replicas[m]
        r_new = r_old + 1
        d = demand[m]
        for gj in hosts[m]:
            dj = d[cfg_of[gj]]
            load[gj] += dj / r_new - dj / r_old
        gs[gi].models.append(m)
        hosted[gi].add(m)
        hosts[m].append(gi)
        used[gi] += need_bytes[m][cfg_of[gi]]
        load[gi] += d[cfg_of[gi]] / r_new
        replicas[m] = r_new

    def best_group(m: str) -> int | None:
        """The group with room for m and the least (load, memory used, index)."""
        b = need_bytes[m]
        on = hosts[m]
        best, best_load, best_used = -1, 0.0, 0.0
        for gi in range(n_groups):
            u = used[gi]
            if u + b[cfg_of[gi]] > budget or gi in on:
                continue
            lo = load[gi]
            if best < 0 or lo < best_load or (lo == best_load and u < best_used):
                best, best_load, best_used = gi, lo, u
        return None if best < 0 else best

    # summed group by group, as a per-group list would be (same rounding)
    n = max(len(gs), 1)
    mean_demand = {m: sum(map(demand[m].__getitem__, cfg_of)) / n for m in models}

    def density(m: str) -> float:
        smallest = min(need_bytes[m]) if gs else 1.0
        return problem.rates.get(m, 0.0) / max(smallest, 1.0)

    first = density if by_density else (lambda m: mean_demand[m])
    for m in sorted(models, key=lambda m: -first(m)):
        if replicas[m] == 0:
            gi = best_group(m)
            if gi is not None:
                add(m, gi)
    if not fill:
        return placement

    weight = need if need is not None else mean_demand
    # Max-heap on need per replica; a model leaves the heap once no group can take it.
    heap = [(-weight.get(m, 0.0) / max(replicas[m], 1), m) for m in models if replicas[m] > 0]
    heapq.heapify(heap)
    while heap:
        _, m = heapq.heappop(heap)
        gi = best_group(m)
        if gi is None:
            continue
        add(m, gi)
        heapq.heappush(heap, (-weight.get(m, 0.0) / replicas[m], m))
    return placement
