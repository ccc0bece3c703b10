"""Simulator-driven greedy model selection (AlpaServe's Algorithm 1, pruned).

Start from the given (usually empty) groups and repeatedly add the one replica that raises
simulated SLO attainment the most. AlpaServe tries every (model, group) pair per step; we try
the `candidates` models with the most missed requests, each on its least-loaded group with
room, which picks the same replica in the common case at a fraction of the simulations.
"""

from __future__ import annotations

from statmux.placement.plan import Group, Placement
from statmux.placement.search_space import Deadline, SearchProblem, request_counts


def greedy_select(
    problem: SearchProblem,
    groups: list[Group],
    models: list[str] | None = None,
    candidates: int = 8,
    deadline: Deadline | None = None,
) -> Placement:
    models = list(problem.models if models is None else models)
    sub = None if models == problem.models else models
    placement = Placement([g.copy() for g in groups])
    index = {m: problem.workload.model_names.index(m) for m in models}
    totals = request_counts(problem.workload)
    current = problem.attainment(placement, sub)
    while deadline is None or not deadline.expired():
        good = problem.simulator(sub).good_per_model(placement)
        problem.simulations += 1
        missed = sorted(
            (int(totals[index[m]] - good[index[m]]), m) for m in models if totals[index[m]] > 0
        )
        missed.reverse()
        trials: list[tuple[float, str, int]] = []
        for miss, m in missed:
            if len(trials) >= candidates:
                break
            if miss <= 0:
                continue
            gi = _least_loaded_group(problem, placement, m)
            if gi is None:
                continue
            placement.groups[gi].models.append(m)
            trials.append((problem.attainment(placement, sub), m, gi))
            placement.groups[gi].models.pop()
        if not trials:
            break
        att, m, gi = max(trials, key=lambda t: (t[0], -t[2]))
        if att <= current + 1e-12:
            break
        placement.groups[gi].models.append(m)
        current = att
    return placement


def _least_loaded_group(problem: SearchProblem, placement: Placement, model: str) -> int | None:
    rates = problem.rates
    best: tuple[float, int] | None = None
    for gi, g in enumerate(placement.groups):
        if not problem.can_add(g, model):
            continue
        load = sum(
            rates.get(m, 0.0) / max(placement.replicas(m), 1) * _stage(problem, m, g)
            for m in g.models
        )
        if best is None or (load, gi) < best:
            best = (load, gi)
    return None if best is None else best[1]


def _stage(problem: SearchProblem, model: str, group: Group) -> float:
    cp = problem.profiles[model].get(group.config.pp, group.config.tp)
    assert cp is not None
    return cp.max_stage(1)
