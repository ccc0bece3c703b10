"""The localized greedy: component scoring is exact, and the greedy improves attainment."""

from __future__ import annotations

import numpy as np

from statmux.placement.greedy import ComponentScorer, component, greedy_select
from statmux.placement.packing import pack
from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem, uniform_groups
from statmux.placement.synthetic_profiles import bert_like_profile
from statmux.placement.workload import gamma_workload, split_rates


def problem(n=6, gpus=8, seed=3):
    names = [f"m{i}" for i in range(n)]
    profiles = {m: bert_like_profile(m, latency=0.1 * (1 + i % 3)) for i, m in enumerate(names)}
    wl = gamma_workload(names, split_rates(15.0, n, "powerLaw", 0.7), 3.0, 200.0, seed)
    slo = {m: 4 * profiles[m].single_device_latency for m in names}
    return SearchProblem(names, profiles, slo, wl, gpus, 8e9)


def test_component_follows_shared_groups():
    c = ParallelConfig(1, 1)
    p = Placement([Group(c, ["a", "b"]), Group(c, ["b", "c"]), Group(c, ["d"]), Group(c, [])])
    groups, models = component(p, {"a"})
    assert groups == {0, 1} and models == {"a", "b", "c"}
    groups, models = component(p, {"d"})
    assert groups == {2} and models == {"d"}


def test_component_gain_equals_full_simulation_difference():
    prob = problem()
    rng = np.random.default_rng(0)
    placement = pack(prob, uniform_groups(8, ParallelConfig(2, 1)), fill=False)
    scorer = ComponentScorer(prob)
    full = prob.simulator()
    checked = 0
    for _ in range(30):
        m = prob.models[int(rng.integers(len(prob.models)))]
        gi = int(rng.integers(len(placement.groups)))
        if not prob.can_add(placement.groups[gi], m):
            continue
        before = full.good_per_model(placement).sum()
        trial = placement.copy()
        trial.groups[gi].models.append(m)
        after_vec = full.good_per_model(trial)
        gain, comp_after = scorer.gain(placement, m, gi)
        assert gain == after_vec.sum() - before
        # with the running counts given, the 'before' simulation is skipped: same answer
        known, _ = scorer.gain(placement, m, gi, full.good_per_model(placement))
        assert known == gain
        inside = comp_after >= 0
        assert (comp_after[inside] == after_vec[inside]).all()
        checked += 1
        if rng.random() < 0.5:  # walk the placement so later checks see larger components
            placement = trial
    assert checked >= 10


def test_greedy_only_adds_improving_replicas_and_respects_memory():
    prob = problem()
    groups = uniform_groups(8, ParallelConfig(1, 1))
    result = greedy_select(prob, groups)
    att = prob.simulator().attainment(result)
    assert att > prob.simulator().attainment(Placement(groups))
    for g in result.groups:
        assert sum(prob.bytes_per_gpu(m, g.config) for m in g.models) <= prob.budget
    # no single further replica of a missing-most model on its best group helps
    again = greedy_select(prob, result.groups)
    assert prob.simulator().attainment(again) == att


def test_greedy_stops_at_its_simulation_budget():
    """max_work: the greedy stops once the problem has simulated that many requests (one
    step may finish past it), and what it placed so far is kept."""
    prob = problem()
    groups = uniform_groups(8, ParallelConfig(1, 1))
    full = greedy_select(prob, groups, candidates=4)
    work = prob.simulator().work
    start = work[0]
    limit = start + 3 * len(prob.simulator())
    cut = greedy_select(prob, groups, candidates=4, max_work=limit)
    placed = sum(len(g.models) for g in cut.groups)
    assert 0 < placed < sum(len(g.models) for g in full.groups)
    assert work[0] <= limit + 4 * len(prob.simulator())  # at most one more step of 4 candidates
