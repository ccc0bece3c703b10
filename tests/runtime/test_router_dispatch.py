"""The router's dispatch and admission (pure logic): the simulator's rule, decision for decision."""

from __future__ import annotations

import numpy as np
import pytest

from statmux.placement.plan import PlanModel
from statmux.placement.sim_kernels import run_unbatched
from statmux.runtime.router_config import (
    RouterConfigError,
    build_config,
    parse_groups_flag,
    parse_groups_json,
)
from statmux.runtime.router_dispatch import Backlog, Candidate, admit, choose, pipeline_end

WEIGHTS = {"source": "synthetic", "architecture": "bert", "preset": "tiny", "dtype": "float32"}


def model(stages: list[float], slo: float = 1.0, name: str = "m") -> PlanModel:
    return PlanModel.model_validate(
        {
            "name": name,
            "sloSeconds": slo,
            "stageLatencySeconds": {"1": stages, "4": [2 * s for s in stages]},
            "weightBytesPerGpu": 1.0,
            "weights": WEIGHTS,
        }
    )


def test_pipeline_arithmetic_matches_the_simulator() -> None:
    b = Backlog(2)
    t1 = b.commit(0.0, [1.0, 2.0])  # s0: 0-1, s1: 1-3
    t2 = b.commit(0.5, [1.0, 2.0])  # s0: 1-2, s1: 3-5
    assert (t1.completion, t2.completion) == (3.0, 5.0)
    assert b.free == [2.0, 5.0]
    assert pipeline_end(0.5, b.free, [1.0, 2.0]) == 7.0


def test_release_reestimates_from_what_is_still_outstanding() -> None:
    b = Backlog(1)
    t1 = b.commit(0.0, [1.0])
    t2 = b.commit(0.0, [1.0])
    assert b.free == [2.0]
    b.release(t1, 0.4)  # answered early: the group is faster than its profile
    assert b.free == [1.4] and b.count == 1
    b.release(t2, 0.9)
    assert b.free == [0.9] and b.count == 0  # idle now
    b.release(t2, 1.0)  # twice: no effect
    assert b.free == [0.9]


def test_release_of_a_pipeline_anchors_at_the_answer() -> None:
    """pp2: an answer on time leaves the estimate as the profile had it (the request behind
    it is already in its second stage); a late answer shifts what is still out by as much."""
    b = Backlog(2)
    t1 = b.commit(0.0, [1.0, 1.0])  # s0: 0-1, s1: 1-2
    b.commit(0.0, [1.0, 1.0])  # s0: 1-2, s1: 2-3
    assert b.free == [2.0, 3.0]
    b.release(t1, 2.0)
    assert b.free == [2.0, 3.0]  # not [3, 4]: t2 does not start over at the answer
    late = Backlog(2)
    u1 = late.commit(0.0, [1.0, 1.0])
    late.commit(0.0, [1.0, 1.0])
    late.release(u1, 2.5)
    assert late.free == [2.5, 3.5]
    late.release(u1, 3.0)  # twice: no effect
    assert late.free == [2.5, 3.5]


def test_overheads_in_the_plan_count_in_dispatch_and_admission() -> None:
    """The per-stage overheads occupy the stages after the first, the per-request one delays
    the completion (statmux.placement.profile.Overheads, as the simulator applies them)."""
    m = PlanModel.model_validate(
        {
            "name": "m",
            "sloSeconds": 1.0,
            "stageLatencySeconds": {"1": [0.1, 0.2]},
            "weightBytesPerGpu": 1.0,
            "weights": WEIGHTS,
            "overheads": {"requestSeconds": 0.05, "stageSeconds": 0.01, "stageFraction": 0.1},
        }
    )
    assert m.served_stage_latency(1) == pytest.approx([0.12, 0.25])  # x1.2, +0.01 after s0
    assert m.stage_latency(1) == [0.1, 0.2]  # what --emulate-device sleeps
    backlog = Backlog(2)
    choice = choose([Candidate("g0", m, backlog)], 1, 0.0)
    assert choice.completion == pytest.approx(0.12 + 0.25 + 0.05)
    assert admit(choice, 0.42 + 1e-9) and not admit(choice, 0.41)
    ticket = backlog.commit(0.0, m.served_stage_latency(1))
    assert ticket.completion == pytest.approx(0.37)  # the stages only: the hop occupies none


def test_choose_earliest_completion_first_wins_ties_and_admission() -> None:
    fast, slow = Backlog(1), Backlog(2)
    a = Candidate("g0", model([0.2]), fast)
    b = Candidate("g1", model([0.1, 0.1]), slow)
    assert choose([a, b], 1, 0.0).candidate is a  # 0.2 each: a tie goes to the first
    fast.commit(0.0, [0.2])
    choice = choose([a, b], 1, 0.0)
    assert choice.candidate is b and choice.completion == pytest.approx(0.2)
    assert admit(choice, 0.2) and not admit(choice, 0.19)
    assert choose([a, b], 4, 0.0).completion == pytest.approx(0.4)  # batch of 4 rows
    none = choose([], 1, 0.0)
    assert none.candidate is None and not admit(none, 10.0)


def test_same_decisions_as_the_simulator_on_a_gamma_workload() -> None:
    """With the profile exact, the router admits and places exactly what the simulator does."""
    rng = np.random.default_rng(7)
    n = 400
    arrivals = np.cumsum(rng.gamma(0.5, 0.02, n))
    model_ids = rng.integers(0, 2, n)
    # groups: g0 pp1 hosts models 0 and 1; g1 pp2 hosts model 0
    lat = np.zeros((2, 2, 2))
    lat[0, 0, 0], lat[0, 1, 0] = 0.03, 0.02
    lat[1, 0] = [0.02, 0.025]
    slo = np.array([0.12, 0.06])
    deadlines = arrivals + slo[model_ids]
    host_ptr = np.array([0, 2, 3])
    host_groups = np.array([0, 1, 0])
    npp = np.array([1, 2])
    record = np.zeros(n)
    good, rejected, _, routed = run_unbatched(
        arrivals, model_ids, deadlines, host_ptr, host_groups, npp, lat, 2, True, record
    )

    backlogs = [Backlog(1), Backlog(2)]
    hosts = {
        0: [
            Candidate("g0", model([0.03], slo[0]), backlogs[0]),
            Candidate("g1", model([0.02, 0.025], slo[0]), backlogs[1]),
        ],
        1: [Candidate("g0", model([0.02], slo[1]), backlogs[0])],
    }
    router_good = np.zeros(2, np.int64)
    router_rejected = np.zeros(2, np.int64)
    router_routed = np.zeros(2, np.int64)
    latencies = np.zeros(n)
    for i in range(n):
        t, m = float(arrivals[i]), int(model_ids[i])
        choice = choose(hosts[m], 1, t)
        if choice.candidate is not None:
            router_routed[int(choice.candidate.name[1])] += 1
        if not admit(choice, float(deadlines[i])):
            router_rejected[m] += 1
            latencies[i] = -1
            continue
        assert choice.candidate is not None
        ticket = choice.candidate.backlog.commit(t, choice.candidate.model.stage_latency(1))
        router_good[m] += 1
        latencies[i] = ticket.completion - t
    assert rejected.sum() > 0 and good.sum() > 0  # the workload exercises both outcomes
    np.testing.assert_array_equal(router_good, good)
    np.testing.assert_array_equal(router_rejected, rejected)
    np.testing.assert_array_equal(router_routed, routed)
    assert routed.min() > 0  # both groups were chosen
    np.testing.assert_allclose(latencies, record)


PLAN = {
    "apiVersion": "statmux.io/v1alpha1",
    "kind": "Plan",
    "modelSet": "t",
    "policy": "manual",
    "cluster": {"gpus": 2, "gpuMemoryBytes": 1, "gpusPerNode": 8},
    "groups": [
        {
            "name": n,
            "gpus": 1,
            "pp": 1,
            "tp": 1,
            "memoryPerGpuBytes": 0,
            "models": [model([0.01], name=m).model_dump(by_alias=True, mode="json")],
        }
        for n, m in (("g0", "a"), ("g1", "b"))
    ],
    "predicted": {"attainment": 1.0},
}


def test_groups_flag_and_file() -> None:
    assert parse_groups_flag("g0=127.0.0.1:1, g1=http://h:2/") == {
        "g0": "http://127.0.0.1:1",
        "g1": "http://h:2",
    }
    for bad, message in [
        ("g0", "is not GROUP=ADDRESS"),
        ("g0=a:1,g0=b:2", "given twice"),
        ("g0=https://a:1", "must be an http:// address"),
        ("g0=a:1/x", "no path"),
        ("", "no GROUP=ADDRESS given"),
    ]:
        with pytest.raises(RouterConfigError, match=message):
            parse_groups_flag(bad)
    assert parse_groups_json('{"g0": "a:1"}', "f") == {"g0": "http://a:1"}
    with pytest.raises(RouterConfigError, match="f: must be a JSON object"):
        parse_groups_json('["a"]', "f")


def test_config_joins_the_plan_and_the_endpoints() -> None:
    from statmux.placement.plan import Plan

    plan = Plan.from_dict(PLAN)
    config = build_config(plan, {"g0": "http://a:1", "g1": "http://b:2"}, strict=True)
    assert [g.name for g in config.hosts["a"]] == ["g0"] and config.slo_seconds["b"] == 1.0
    with pytest.raises(RouterConfigError, match="no address for plan group"):
        build_config(plan, {"g0": "http://a:1"}, strict=True)
    with pytest.raises(RouterConfigError, match="groups the plan does not have: g7"):
        build_config(plan, {"g7": "http://a:1"}, strict=False)
    partial = build_config(plan, {"g0": "http://a:1"}, strict=False)
    assert partial.unrouted == ("g1",) and partial.hosts["b"] == ()


def test_request_rows_from_the_rest_header() -> None:
    from statmux.runtime.router_http import request_rows

    header = b'{"inputs":[{"name":"x","datatype":"INT64","shape":[3, 2],"data":[1,2,3,4,5,6]}]}'
    assert request_rows(header) == 3
    assert request_rows(b'{"inputs":[{"shape": [0, 1]}]}') == 1  # the group will refuse it
    assert request_rows(b"not json") == 1
