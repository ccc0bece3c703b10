"""The simulator against numbers worked out by hand from its documented semantics, and
against a plain-Python reference of the non-batching semantics on random small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.simulator import SimResult, Simulator
from statmux.placement.synthetic_profiles import make_profile
from statmux.placement.workload import Workload, gamma_workload


def wl(names: list[str], events: list[tuple[float, str]], duration: float = 1.0) -> Workload:
    idx = {n: i for i, n in enumerate(names)}
    return Workload(
        names,
        np.array([t for t, _ in events]),
        np.array([idx[m] for _, m in events], dtype=np.int32),
        duration,
    )


def group(pp: int, *models: str, tp: int = 1) -> Group:
    return Group(ParallelConfig(pp, tp), list(models))


# ----------------------------------------------------------------- hand-computed cases
def test_three_requests_on_a_two_stage_pipeline():
    # stages 0.1 then 0.2; arrivals 0, 0.05, 0.1:
    # r0: stage0 0-0.1, stage1 0.1-0.3 -> 0.3
    # r1: stage0 0.1-0.2, stage1 0.3-0.5 -> latency 0.45
    # r2: stage0 0.2-0.3, stage1 0.5-0.7 -> latency 0.6
    profiles = {"a": make_profile("a", {(2, 1): [0.1, 0.2]})}
    work = wl(["a"], [(0.0, "a"), (0.05, "a"), (0.1, "a")], duration=1.0)
    res = Simulator(profiles, work, {"a": 1.0}).run(Placement([group(2, "a")]))
    assert res.n_requests == 3 and res.n_good == 3 and res.n_rejected == 0
    assert sorted(res.latencies) == pytest.approx([0.3, 0.45, 0.6])
    assert res.latency_p50 == pytest.approx(0.45)
    # busiest stage (stage 1) is busy 3 x 0.2 s of the 1 s
    assert res.group_utilization == pytest.approx([0.6])
    assert res.goodput == pytest.approx(3.0)


def test_admission_rejects_a_request_that_would_miss():
    # With SLO 0.5 the third request (completion 0.7 > 0.1 + 0.5) is rejected at arrival
    # and occupies nothing; the second (0.5 <= 0.55) still fits.
    profiles = {"a": make_profile("a", {(2, 1): [0.1, 0.2]})}
    work = wl(["a"], [(0.0, "a"), (0.05, "a"), (0.1, "a"), (0.7, "a")], duration=2.0)
    res = Simulator(profiles, work, {"a": 0.5}).run(Placement([group(2, "a")]))
    assert (res.n_good, res.n_rejected) == (3, 1)
    assert res.attainment == pytest.approx(0.75)
    # the rejected request left no trace: the one at 0.7 starts at once (stage 1 free at 0.5)
    assert sorted(res.latencies) == pytest.approx([0.3, 0.3, 0.45])


def test_routes_to_the_group_that_finishes_first():
    # g0: one stage of 0.3 s; g1: two stages of 0.1 s. r0 finishes at 0.2 on g1 (vs 0.3).
    # r1 at 0.01: g1 would finish at max(0.2, 0.11) + 0.1 = 0.3; g0 at 0.31 -> g1 again.
    # r2 at 0.02: g1 -> 0.4, g0 -> 0.32 -> g0.
    profiles = {"a": make_profile("a", {(1, 1): [0.3], (2, 1): [0.1, 0.1]})}
    work = wl(["a"], [(0.0, "a"), (0.01, "a"), (0.02, "a")], duration=1.0)
    res = Simulator(profiles, work, {"a": 10.0}).run(Placement([group(1, "a"), group(2, "a")]))
    assert sorted(res.latencies) == pytest.approx([0.2, 0.29, 0.3])
    assert res.group_utilization == pytest.approx([0.3, 0.2])


def test_ties_go_to_the_lowest_group_index():
    profiles = {"a": make_profile("a", {(1, 1): [0.1]})}
    work = wl(["a"], [(0.0, "a"), (0.5, "a")], duration=1.0)
    res = Simulator(profiles, work, {"a": 1.0}).run(Placement([group(1, "a"), group(1, "a")]))
    assert res.group_utilization == pytest.approx([0.2, 0.0])


def test_model_placed_nowhere_misses_everything():
    profiles = {m: make_profile(m, {(1, 1): [0.1]}) for m in "ab"}
    work = wl(["a", "b"], [(0.0, "a"), (0.1, "b"), (0.5, "b"), (0.6, "a")], duration=1.0)
    sim = Simulator(profiles, work, {"a": 1.0, "b": 1.0})
    res = sim.run(Placement([group(1, "a")]))
    assert res.per_model_attainment == {"a": 1.0, "b": 0.0}
    assert list(res.rejected) == [0, 2]
    assert sim.attainment(Placement([group(1, "a")])) == pytest.approx(0.5)
    assert list(sim.good_per_model(Placement([]))) == [0, 0]


def test_batching_combines_queued_requests():
    # Batch 1 takes 0.1 s, batch 2 0.15 s. r0 (t=0) runs alone 0-0.1; r1 (0.01) and r2
    # (0.02) queue meanwhile and then run as one batch 0.1-0.25.
    profiles = {"a": make_profile("a", {(1, 1): [[0.1], [0.15]]})}
    work = wl(["a"], [(0.0, "a"), (0.01, "a"), (0.02, "a")], duration=1.0)
    res = Simulator(profiles, work, {"a": 1.0}, max_batch_size=2).run(Placement([group(1, "a")]))
    assert res.n_good == 3 and res.n_dropped == 0
    assert sorted(res.latencies) == pytest.approx([0.1, 0.23, 0.24])
    assert res.group_utilization == pytest.approx([0.25])
    # without batching the last request would finish at 0.3
    plain = Simulator(profiles, work, {"a": 1.0}).run(Placement([group(1, "a")]))
    assert max(plain.latencies) == pytest.approx(0.28)


def test_batch_size_beyond_profile_uses_next_profiled_size_and_caps():
    # Profiled sizes 1 and 4: a batch of 3 runs at the batch-4 latency; max batch 8 is capped
    # at 4. r0 alone (0-0.1), then r1..r5 queued: batch of 4 (0.1-0.3), then r5 (0.3-0.4).
    profiles = {"a": make_profile("a", {(1, 1): [[0.1], [0.2]]}, batch_sizes=[1, 4])}
    events = [(0.0, "a")] + [(0.01 * i, "a") for i in range(1, 6)]
    res = Simulator(profiles, wl(["a"], events), {"a": 1.0}, max_batch_size=8).run(
        Placement([group(1, "a")])
    )
    assert res.n_good == 6
    assert res.group_utilization == pytest.approx([0.1 + 0.2 + 0.1])
    assert max(res.latencies) == pytest.approx(0.4 - 0.05)


def test_batching_drops_queued_requests_that_can_no_longer_make_it():
    # a: batch 1 0.1 s, batch 2 0.35 s, SLO 0.5; b: 0.1 s, SLO 0.5 (deadline 0.53).
    # r0 (a, 0) runs alone 0-0.1. r1 (a, .01), r2 (a, .02), r3 (b, .03) queue; the
    # estimate for r3 is 0.4 <= 0.53 so it is admitted. At 0.1 a's head has the earlier
    # deadline (0.51) and a batch of 2 still makes it (0.45); afterwards r3 alone would end
    # at 0.55 > 0.53, so it is dropped.
    profiles = {
        "a": make_profile("a", {(1, 1): [[0.1], [0.35]]}),
        "b": make_profile("b", {(1, 1): [0.1]}),
    }
    work = wl(["a", "b"], [(0.0, "a"), (0.01, "a"), (0.02, "a"), (0.03, "b")])
    res = Simulator(profiles, work, {"a": 0.5, "b": 0.5}, max_batch_size=2).run(
        Placement([group(1, "a", "b")])
    )
    assert list(res.good) == [3, 0] and list(res.dropped) == [0, 1] and res.n_rejected == 0
    assert sorted(res.latencies) == pytest.approx([0.1, 0.43, 0.44])


def test_merge_sums_windows():
    profiles = {"a": make_profile("a", {(1, 1): [0.1]})}
    work = wl(["a"], [(0.0, "a"), (0.05, "a"), (1.0, "a"), (1.5, "a")], duration=2.0)
    sim_args = (profiles,)
    parts = [
        Simulator(*sim_args, w, {"a": 0.12}).run(Placement([group(1, "a")]))
        for w in work.windows(1.0)
    ]
    merged = SimResult.merge(parts)
    whole = Simulator(profiles, work, {"a": 0.12}).run(Placement([group(1, "a")]))
    assert merged.n_requests == whole.n_requests == 4
    assert merged.n_good == whole.n_good == 3
    assert merged.duration == pytest.approx(2.0)
    assert merged.group_utilization == pytest.approx(whole.group_utilization)


def test_bad_placements_are_reported_clearly():
    profiles = {"a": make_profile("a", {(1, 1): [0.1]})}
    sim = Simulator(profiles, wl(["a"], [(0.0, "a")]), {"a": 1.0})
    with pytest.raises(ValueError, match=r"'a'.*pp2×tp1.*no such config"):
        sim.attainment(Placement([group(2, "a")]))
    with pytest.raises(ValueError, match="'zz'"):
        sim.attainment(Placement([group(1, "zz")]))
    with pytest.raises(ValueError, match="no SLO for model"):
        Simulator(profiles, wl(["a"], [(0.0, "a")]), {})


def test_empty_workload_has_full_attainment():
    profiles = {"a": make_profile("a", {(1, 1): [0.1]})}
    res = Simulator(profiles, wl(["a"], []), {"a": 1.0}).run(Placement([group(1, "a")]))
    assert res.attainment == 1.0 and res.n_requests == 0 and math.isnan(res.latency_p99)


# ----------------------------------------------------------------- reference implementation
def reference_unbatched(profiles, work, slo, placement):
    """Direct transcription of the documented non-batching semantics."""
    free = [[0.0] * g.config.pp for g in placement.groups]
    good = [0] * len(work.model_names)
    lat_out = []
    for t, mid in zip(work.arrivals.tolist(), work.model_ids.tolist(), strict=True):
        name = work.model_names[mid]
        best, best_g, best_ends = math.inf, -1, None
        for gi, g in enumerate(placement.groups):
            if name not in g.models:
                continue
            stages = profiles[name].get(g.config.pp, g.config.tp).stage_latency[0]
            e, ends = t, []
            for k in range(g.config.pp):
                e = max(e, free[gi][k]) + float(stages[k])
                ends.append(e)
            if e < best:
                best, best_g, best_ends = e, gi, ends
        if best_g < 0 or best > t + slo[name]:
            continue
        free[best_g] = best_ends
        good[mid] += 1
        lat_out.append(best - t)
    return good, lat_out


@pytest.mark.parametrize("seed", range(40))
def test_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n_models = int(rng.integers(1, 5))
    names = [f"m{i}" for i in range(n_models)]
    configs = [(1, 1), (2, 1), (3, 1), (2, 2)]
    profiles = {
        n: make_profile(n, {c: rng.uniform(0.01, 0.2, size=c[0]).round(3) for c in configs})
        for n in names
    }
    groups = []
    for _ in range(int(rng.integers(1, 5))):
        pp, tp = configs[int(rng.integers(len(configs)))]
        hosted = [n for n in names if rng.random() < 0.6]
        groups.append(group(pp, *hosted, tp=tp))
    placement = Placement(groups)
    work = gamma_workload(names, rng.uniform(1, 20, n_models), rng.uniform(0.5, 4), 20.0, seed=seed)
    slo = {n: float(rng.uniform(0.1, 1.0)) for n in names}
    sim = Simulator(profiles, work, slo)
    ref_good, ref_lat = reference_unbatched(profiles, work, slo, placement)
    res = sim.run(placement)
    assert list(res.good) == ref_good
    assert res.latencies.tolist() == ref_lat  # exact: same arithmetic in the same order
    assert list(sim.good_per_model(placement)) == ref_good
    assert res.n_rejected == len(work) - sum(ref_good)


@pytest.mark.parametrize("seed", range(15))
def test_event_driven_kernel_without_batching_matches_fifo(seed):
    # With one SLO for all models and equal latencies, earliest-deadline-first is
    # arrival order and the queue estimate is exact, so the queueing kernel at batch size 1
    # must agree with the one-pass kernel request for request.
    rng = np.random.default_rng(100 + seed)
    names = [f"m{i}" for i in range(3)]
    stage = {c: rng.uniform(0.01, 0.1, size=c[0]).round(3) for c in [(1, 1), (2, 1), (4, 1)]}
    profiles = {n: make_profile(n, stage) for n in names}
    groups = [
        group(pp, *[n for n in names if rng.random() < 0.7])
        for pp in rng.choice([1, 2, 4], size=int(rng.integers(1, 4)))
    ]
    work = gamma_workload(names, rng.uniform(5, 30, 3), 3.0, 20.0, seed=seed)
    slo = dict.fromkeys(names, float(rng.uniform(0.2, 0.6)))
    a = Simulator(profiles, work, slo).run(Placement(groups))
    b = Simulator(profiles, work, slo, event_driven=True).run(Placement(groups))
    assert list(a.good) == list(b.good)
    assert b.n_dropped == 0
    assert np.array_equal(a.latencies, b.latencies)


def test_batching_never_does_worse_than_single_requests_under_load():
    # The same overloaded workload: batching (a batch of 8 costs 2x a single request)
    # must serve more requests within the SLO, and every served request meets its SLO.
    names = ["a", "b"]
    lat = [[0.05], [0.06], [0.07], [0.08], [0.09], [0.09], [0.1], [0.1]]
    profiles = {n: make_profile(n, {(1, 1): lat}) for n in names}
    work = gamma_workload(names, [30.0, 30.0], 2.0, 60.0, seed=3)
    slo = dict.fromkeys(names, 0.3)
    placement = Placement([group(1, "a", "b")])
    single = Simulator(profiles, work, slo).run(placement)
    batched = Simulator(profiles, work, slo, max_batch_size=8).run(placement)
    assert batched.n_good > single.n_good
    assert batched.latencies.max() <= 0.3 + 1e-12
    assert batched.n_good + batched.n_rejected + batched.n_dropped == len(work)


def test_models_without_requests_may_be_hosted_without_a_profile():
    # A simulator over a subset of the models takes a placement of all of them: hosting a
    # model that has no requests (and here no profile) changes nothing.
    profiles = {"a": make_profile("a", {(1, 1): [0.1]})}
    work = wl(["a", "b"], [(0.0, "a"), (0.05, "a")])
    sim = Simulator(profiles, work, {"a": 1.0, "b": 1.0})
    with_b = sim.run(Placement([group(1, "a", "b")]))
    without_b = sim.run(Placement([group(1, "a")]))
    assert list(with_b.good) == list(without_b.good) == [2, 0]
    assert with_b.per_model_attainment["b"] == 1.0  # no requests, nothing missed


def reference_batched(profiles, work, slo, placement, max_batch):
    """Plain-Python transcription of the documented batching semantics."""
    names = work.model_names
    arr, mids = work.arrivals.tolist(), work.model_ids.tolist()
    dl = [t + slo[names[m]] for t, m in zip(arr, mids, strict=True)]
    groups = placement.groups
    hosted = [[names.index(n) for n in dict.fromkeys(g.models)] for g in groups]

    def stage_lat(g, m, b):
        cp = profiles[names[m]].get(groups[g].config.pp, groups[g].config.tp)
        row = next(i for i, s in enumerate(cp.batch_sizes) if s >= b)
        return [float(x) for x in cp.stage_latency[row]]

    def cap(g, m):
        cp = profiles[names[m]].get(groups[g].config.pp, groups[g].config.tp)
        return min(max_batch, max(cp.batch_sizes))

    def chain(t, fr, lat, commit=False):
        e = t
        for k in range(len(lat)):
            e = max(e, fr[k]) + lat[k]
            if commit:
                fr[k] = e
        return e

    free = [[0.0] * g.config.pp for g in groups]
    est = [[0.0] * g.config.pp for g in groups]
    queues = [{m: [] for m in range(len(names))} for _ in groups]
    good, rejected, dropped = [0] * len(names), [0] * len(names), [0] * len(names)
    lat_out = {}
    for i in range(len(arr) + 1):
        t = arr[i] if i < len(arr) else math.inf
        for g in range(len(groups)):
            q = queues[g]
            while any(q.values()):
                tau = max(free[g][0], min(arr[v[0]] for v in q.values() if v))
                if tau >= t:
                    break
                for m, v in q.items():
                    alone = chain(tau, free[g], stage_lat(g, m, 1)) if v else 0.0
                    while v and alone > dl[v[0]]:
                        dropped[m] += 1
                        v.pop(0)
                heads = [(dl[v[0]], m) for m, v in q.items() if v]
                if heads:
                    _, m = min(heads)
                    v = q[m]
                    limit, b = min(cap(g, m), len(v)), 1
                    while b < limit and chain(tau, free[g], stage_lat(g, m, b + 1)) <= dl[v[0]]:
                        b += 1
                    end = chain(tau, free[g], stage_lat(g, m, b), commit=True)
                    for j in v[:b]:
                        lat_out[j] = end - arr[j]
                    good[m] += b
                    del v[:b]
                est[g] = list(free[g])
                for m, v in q.items():
                    for j in v:
                        chain(arr[j], est[g], stage_lat(g, m, 1), commit=True)
        if i == len(arr):
            break
        m = mids[i]
        best, best_g = math.inf, -1
        for g in range(len(groups)):
            if m in hosted[g]:
                e = chain(t, est[g], stage_lat(g, m, 1))
                if e < best:
                    best, best_g = e, g
        if best_g < 0 or best > dl[i]:
            rejected[m] += 1
            continue
        queues[best_g][m].append(i)
        chain(t, est[best_g], stage_lat(best_g, m, 1), commit=True)
    return good, rejected, dropped, [lat_out[j] for j in sorted(lat_out)]


@pytest.mark.parametrize("seed", range(20))
def test_batching_kernel_matches_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    names = [f"m{i}" for i in range(int(rng.integers(1, 4)))]
    configs = [(1, 1), (2, 1), (3, 1)]
    sizes = [1, 2, 4]

    def batch_rows(pp):
        base = rng.uniform(0.01, 0.1, size=pp).round(3)
        return [base * f for f in (1.0, rng.uniform(1.0, 1.8), rng.uniform(1.8, 3.0))]

    profiles = {
        n: make_profile(n, {c: batch_rows(c[0]) for c in configs}, batch_sizes=sizes) for n in names
    }
    groups = [
        group(int(pp), *[n for n in names if rng.random() < 0.7])
        for pp in rng.choice([1, 2, 3], size=int(rng.integers(1, 4)))
    ]
    work = gamma_workload(names, rng.uniform(5, 40, len(names)), 3.0, 10.0, seed=seed)
    slo = {n: float(rng.uniform(0.1, 0.6)) for n in names}
    max_batch = int(rng.choice([2, 3, 8]))
    ref_good, ref_rej, ref_drop, ref_lat = reference_batched(
        profiles, work, slo, Placement(groups), max_batch
    )
    res = Simulator(profiles, work, slo, max_batch_size=max_batch).run(Placement(groups))
    assert list(res.good) == ref_good
    assert list(res.rejected) == ref_rej
    assert list(res.dropped) == ref_drop
    assert res.latencies.tolist() == ref_lat


def test_restricted_simulator_equals_a_simulator_over_those_requests():
    names = ["a", "b", "c"]
    profiles = {n: make_profile(n, {(1, 1): [0.05], (2, 1): [0.03, 0.03]}) for n in names}
    work = gamma_workload(names, [10.0, 20.0, 5.0], 2.0, 30.0, seed=4)
    slo = dict.fromkeys(names, 0.2)
    placement = Placement([group(1, "a", "b"), group(2, "b", "c"), group(1, "c")])
    full = Simulator(profiles, work, slo)
    sub = full.restricted(["b", "c"])
    only = work.select(names)  # same model ids
    keep = np.isin(only.model_ids, [1, 2])
    direct = Simulator(
        profiles, Workload(names, only.arrivals[keep], only.model_ids[keep], 30.0), slo
    )
    assert list(sub.good_per_model(placement)) == list(direct.good_per_model(placement))
    assert sub.good_per_model(placement)[0] == 0 and len(sub) == int(keep.sum())
    # the parent is unaffected
    assert len(full) == len(work)


# ----------------------------------------------------------------- calibration overheads
@pytest.mark.parametrize("max_batch_size", [1, 2])
def test_overheads_by_hand(max_batch_size: int) -> None:
    # stages 0.1, 0.1 (pp 2); stageFraction 0.1 -> 0.1 x (1 + 0.1 x 2) = 0.12 per stage;
    # stageSeconds 0.005 on stage 1 -> 0.125; requestSeconds 0.01 after the pipeline. SLO 0.3.
    # r0 @0:    0-0.12, 0.12-0.245, +0.01 -> latency 0.255 (good)
    # r1 @0.05: 0.12-0.24, 0.245-0.37, +0.01 -> 0.38 - 0.05 = 0.33 > 0.3 (rejected)
    # r2 @0.3:  0.3-0.42, 0.42-0.545, +0.01 -> latency 0.255 (good)
    # Without overheads r1 would finish at 0.3 (latency 0.25) and all three are good.
    from dataclasses import replace

    from statmux.placement.profile import Overheads

    plain = make_profile("a", {(2, 1): [0.1, 0.1]}, batch_sizes=(1,))
    calibrated = replace(plain, overheads=Overheads(0.01, 0.005, 0.1))
    work = wl(["a"], [(0.0, "a"), (0.05, "a"), (0.3, "a")], duration=1.0)
    place = Placement([group(2, "a")])
    res = Simulator({"a": calibrated}, work, {"a": 0.3}, max_batch_size).run(place)
    assert (res.n_good, res.n_rejected + res.n_dropped) == (2, 1)
    assert sorted(res.latencies) == pytest.approx([0.255, 0.255])
    assert res.group_utilization == pytest.approx([2 * 0.125])
    base = Simulator({"a": plain}, work, {"a": 0.3}, max_batch_size).run(place)
    assert base.n_good == 3
    assert sorted(base.latencies) == pytest.approx([0.2, 0.2, 0.25])


def test_routed_counts_every_request_sent_to_a_group() -> None:
    profiles = {m: make_profile(m, {(1, 1): [0.1]}) for m in "ab"}
    work = wl(["a", "b"], [(0.0, "a"), (0.01, "a"), (0.02, "b"), (0.5, "a")], duration=1.0)
    place = Placement([group(1, "a"), group(1, "a", "b")])
    good, routed = Simulator(profiles, work, {"a": 0.15, "b": 0.15}).good_and_routed(place)
    # a@0 -> g0; a@0.01 -> g1 (g0 busy); b@0.02 -> g1, would end 0.21 > 0.17: rejected but
    # routed; a@0.5 -> g0 (tie: lowest index)
    assert routed.tolist() == [2, 2]
    assert good.tolist() == [3, 0]


def test_per_model_batch_caps_act_per_model():
    # a and b in separate groups: each model's results depend on its own cap only.
    names = ["a", "b"]
    lat = [[0.05], [0.06], [0.07], [0.08]]
    profiles = {n: make_profile(n, {(1, 1): lat}) for n in names}
    work = gamma_workload(names, [30.0, 30.0], 2.0, 30.0, seed=5)
    slo = dict.fromkeys(names, 0.3)
    placement = Placement([group(1, "a"), group(1, "b")])
    mixed = Simulator(profiles, work, slo, max_batch_size={"a": 4, "b": 1}).run(placement)
    four = Simulator(profiles, work, slo, max_batch_size=4).run(placement)
    one = Simulator(profiles, work, slo, max_batch_size=1, event_driven=True).run(placement)
    assert mixed.per_model_attainment["a"] == four.per_model_attainment["a"]
    assert mixed.per_model_attainment["b"] == one.per_model_attainment["b"]
    assert four.per_model_attainment["b"] > one.per_model_attainment["b"]  # the cap matters
    same = Simulator(profiles, work, slo, max_batch_size=dict.fromkeys(names, 4)).run(placement)
    assert same.attainment == four.attainment
    with pytest.raises(ValueError, match="no cap for model"):
        Simulator(profiles, work, slo, max_batch_size={"a": 4})
