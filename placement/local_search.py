"""Simulator-guided local search over replica moves (statmux's refinement step).

Moves, tried for the models that miss the most requests first:
- add: a replica of w on the least-loaded group with room (AlpaServe's greedy step);
- drop: a spare replica on the group whose models miss the most. Extra replicas can hurt:
  the requests of one model that a shared group admits delay the next bursts of the
  others there (measured: on 3 models and 3 GPUs, 30 of 240 single added replicas lowered
  the simulated attainment);
- replace: on a group without model w, drop the least-needed replica that frees enough
  memory and add w;
- swap: exchange w on its most loaded group with another group's model;
- reconfigure: give one group another (pp, tp) of the same size, keeping its models.
First improvement wins; the search stops after `max_simulations` simulations (a budget that
does not depend on machine load, so results are reproducible), at the optional deadline, or
when no move helps.
"""

from __future__ import annotations

import numpy as np

from statmux.placement.plan import Group, Placement
from statmux.placement.search_space import (
    Deadline,
    SearchProblem,
    configs_of_size,
    request_counts,
)


def improve(
    problem: SearchProblem,
    placement: Placement,
    deadline: Deadline | None = None,
    models: list[str] | None = None,
    max_trials_per_round: int = 48,
    max_simulations: int = 100,
) -> tuple[Placement, float]:
    models = list(problem.models if models is None else models)
    sub = None if models == problem.models else models
    names = problem.workload.model_names
    totals = request_counts(problem.workload)
    best = placement.copy()
    best_att = problem.attainment(best, sub)
    stop_at = problem.simulations + max_simulations

    def out_of_budget() -> bool:
        return problem.simulations >= stop_at or (deadline is not None and deadline.expired())

    while not out_of_budget():
        good = problem.simulator(sub).good_per_model(best)
        problem.simulations += 1
        missed = {m: int(totals[names.index(m)] - good[names.index(m)]) for m in models}
        if sum(missed.values()) == 0:
            break
        improved = False
        for trial in _moves(problem, best, missed, max_trials_per_round):
            if out_of_budget():
                break
            att = problem.attainment(trial, sub)
            if att > best_att + 1e-12:
                best, best_att, improved = trial, att, True
                break
        if not improved:
            break
    return best, best_att


def _moves(
    problem: SearchProblem, placement: Placement, missed: dict[str, int], limit: int
) -> list[Placement]:
    rates = problem.rates
    needy = [m for m, n in sorted(missed.items(), key=lambda kv: -kv[1]) if n > 0][:4]
    trials: list[Placement] = []

    def per_replica_need(m: str) -> float:
        return rates.get(m, 0.0) / max(placement.replicas(m), 1)

    for w in needy:
        gi_add = _least_loaded(problem, placement, w)
        if gi_add is not None:
            new = placement.groups[gi_add].copy()
            new.models.append(w)
            trials.append(_with_group(placement, gi_add, new))
    if needy:
        gi = _busiest_group(placement, missed)
        g = placement.groups[gi]
        for m in g.models:
            if placement.replicas(m) > 1:
                trials.append(
                    _with_group(placement, gi, Group(g.config, [x for x in g.models if x != m]))
                )
    for w in needy:
        # replace: free memory on a group by dropping its least-needed spare replicas
        for gi, g in enumerate(placement.groups):
            if w in g.models or not problem.fits_alone(w, g.config):
                continue
            spare = sorted((m for m in g.models if placement.replicas(m) > 1), key=per_replica_need)
            new = g.copy()
            while spare and not problem.can_add(new, w):
                new.models.remove(spare.pop(0))
            if problem.can_add(new, w):
                new.models.append(w)
                trials.append(_with_group(placement, gi, new))
        # swap: move w from its busiest group to a group that lacks it
        homes = [gi for gi, g in enumerate(placement.groups) if w in g.models]
        for hi in homes[:2]:
            home = placement.groups[hi]
            for gi, g in enumerate(placement.groups):
                if gi == hi or w in g.models:
                    continue
                for x in g.models:
                    if x in home.models:
                        continue
                    a = Group(home.config, [x if m == w else m for m in home.models])
                    b = Group(g.config, [w if m == x else m for m in g.models])
                    if _fits(problem, a) and _fits(problem, b):
                        trial = _with_group(placement, hi, a)
                        trials.append(_with_group(trial, gi, b))
                        break
    # reconfigure the group whose models miss the most
    if needy:
        gi = _busiest_group(placement, missed)
        g = placement.groups[gi]
        for cfg in configs_of_size(g.config.gpus, (problem.profiles[m] for m in g.models)):
            if cfg != g.config and _fits(problem, Group(cfg, g.models)):
                trials.append(_with_group(placement, gi, Group(cfg, list(g.models))))
    rng = np.random.default_rng(len(trials))
    if len(trials) > limit:
        keep = rng.choice(len(trials), size=limit, replace=False)
        trials = [trials[i] for i in sorted(keep)]
    return trials


def _least_loaded(problem: SearchProblem, placement: Placement, model: str) -> int | None:
    rates = problem.rates
    best: tuple[float, int] | None = None
    for gi, g in enumerate(placement.groups):
        if problem.can_add(g, model):
            load = sum(rates.get(m, 0.0) / max(placement.replicas(m), 1) for m in g.models)
            if best is None or (load, gi) < best:
                best = (load, gi)
    return None if best is None else best[1]


def _busiest_group(placement: Placement, missed: dict[str, int]) -> int:
    scores = [sum(missed.get(m, 0) for m in g.models) for g in placement.groups]
    return int(np.argmax(scores))


def _fits(problem: SearchProblem, group: Group) -> bool:
    total = sum(problem.bytes_per_gpu(m, group.config) for m in group.models)
    return total <= problem.budget


def _with_group(placement: Placement, index: int, group: Group) -> Placement:
    out = placement.copy()
    out.groups[index] = group
    return out
