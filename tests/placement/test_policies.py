"""Placement policies on small problems built from test profiles."""

from __future__ import annotations

import pytest

from statmux.placement.packing import pack
from statmux.placement.plan import Group, Placement
from statmux.placement.policies import (
    alpaserve_policy,
    clockwork_pp_policy,
    latency_clusters,
    selective_replication,
    split_gpus,
    statmux_policy,
)
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem, sample_workload, uniform_groups
from statmux.placement.synthetic_profiles import bert_like_profile, make_profile
from statmux.placement.workload import gamma_workload, split_rates

GiB = 2**30


def problem(n=8, gpus=8, rate=20.0, cv=4.0, duration=300.0, budget=13 * GiB, slow=(), seed=1):
    names = [f"m{i}" for i in range(n)]
    profiles = {
        m: bert_like_profile(m, latency=0.3 if i in slow else 0.1) for i, m in enumerate(names)
    }
    wl = gamma_workload(names, split_rates(rate, n, "powerLaw", 0.5), cv, duration, seed)
    slo = {m: 5 * profiles[m].single_device_latency for m in names}
    return SearchProblem(names, profiles, slo, wl, gpus, budget)


def attainment(p, placement):
    return p.simulator().attainment(placement)


def memory_ok(p, placement):
    for g in placement.groups:
        used = sum(p.bytes_per_gpu(m, g.config) for m in g.models)
        assert used <= p.budget, (g, used)
        assert len(set(g.models)) == len(g.models)


def test_uniform_groups_cover_all_gpus_with_power_of_two_leftovers():
    groups = uniform_groups(10, ParallelConfig(4, 1))
    assert [g.config for g in groups] == [ParallelConfig(4, 1)] * 2 + [ParallelConfig(2, 1)]
    groups = uniform_groups(14, ParallelConfig(4, 2))
    assert [g.config for g in groups] == [
        ParallelConfig(4, 2),
        ParallelConfig(2, 2),
        ParallelConfig(1, 2),
    ]
    for n in range(1, 40):
        for cfg in (ParallelConfig(8, 1), ParallelConfig(2, 4), ParallelConfig(1, 1)):
            gs = uniform_groups(n, cfg)
            assert sum(g.config.gpus for g in gs) == n
            assert all(g.config.gpus & (g.config.gpus - 1) == 0 for g in gs)


def test_pack_places_every_model_and_respects_memory():
    p = problem(budget=6e9)  # 2.6 GB models: two per GPU at (1,1)
    placement = pack(p, uniform_groups(8, ParallelConfig(1, 1)))
    memory_ok(p, placement)
    assert all(placement.replicas(m) >= 1 for m in p.models)
    # filled: every GPU holds two models
    assert all(len(g.models) == 2 for g in placement.groups)


def test_selective_replication_uses_single_gpus_and_beats_one_replica_each():
    p = problem()
    sr = selective_replication(p)
    memory_ok(p, sr)
    assert all(g.config == ParallelConfig(1, 1) for g in sr.groups)
    one_each = pack(p, uniform_groups(8, ParallelConfig(1, 1)), fill=False)
    assert attainment(p, sr) >= attainment(p, one_each)


def test_model_parallelism_beats_replication_under_bursts_with_tight_memory():
    # The AlpaServe motivation: little memory (one model per GPU) and bursty traffic.
    p = problem(budget=3e9, cv=4.0, rate=12.0)
    sr = selective_replication(p)
    alpa = alpaserve_policy(p).placement
    assert attainment(p, alpa) > attainment(p, sr)
    assert any(g.config.pp > 1 or g.config.tp > 1 for g in alpa.groups)


def test_statmux_at_least_as_good_as_alpaserve_on_small_cases():
    for kwargs in ({}, {"budget": 3e9}, {"cv": 1.0, "rate": 30.0}, {"slow": (0, 1)}):
        p = problem(**kwargs)
        ours = statmux_policy(p, refine_simulations=200).placement
        theirs = alpaserve_policy(p).placement
        memory_ok(p, ours)
        assert attainment(p, ours) >= attainment(p, theirs) - 1e-9, kwargs


def test_clockwork_pp_is_at_least_sr_per_window_oracle():
    p = problem(duration=600.0)
    cw = clockwork_pp_policy(p, windows=4)
    assert cw.attainment is not None
    assert cw.notes["windows"] == 4
    assert cw.attainment >= attainment(p, selective_replication(p)) - 0.02


def test_latency_clusters_and_split():
    p = problem(n=6, gpus=16, slow=(3, 4, 5))
    clusters = latency_clusters(p)
    assert [sorted(c) for c in clusters] == [["m0", "m1", "m2"], ["m3", "m4", "m5"]]
    alloc = split_gpus(p, clusters)
    assert alloc is not None and sum(alloc) == 16 and all(a >= 1 for a in alloc)


def test_model_too_big_for_one_gpu_gets_parallel_group():
    big = make_profile(
        "big",
        {(1, 1): [0.2], (2, 1): [0.1, 0.1], (4, 1): [0.05] * 4},
        weight_bytes=20 * GiB,
    )
    wl = gamma_workload(["big"], [2.0], 1.0, 120.0, 0)
    p = SearchProblem(["big"], {"big": big}, {"big": 1.0}, wl, 4, 13 * GiB)
    placement = statmux_policy(p).placement
    memory_ok(p, placement)
    assert placement.replicas("big") >= 1
    assert all(g.config.gpus >= 2 for g in placement.groups if "big" in g.models)
    assert attainment(p, placement) > 0.9


def test_sample_workload_keeps_mix_and_size():
    p = problem(duration=3600.0, rate=50.0)
    sample = sample_workload(p.workload, 20_000)
    assert 15_000 <= len(sample.arrivals) <= 20_000
    assert (sample.arrivals[1:] >= sample.arrivals[:-1]).all()
    full = p.workload.rates() / p.workload.rates().sum()
    part = sample.rates() / sample.rates().sum()
    assert abs(full - part).max() < 0.05


@pytest.mark.parametrize("fill", [True, False])
def test_manual_like_placement_round_trips(fill):
    p = problem()
    placement = pack(p, uniform_groups(8, ParallelConfig(2, 1)), fill=fill)
    copy = Placement([Group(g.config, list(g.models)) for g in placement.groups])
    assert attainment(p, copy) == attainment(p, placement)
