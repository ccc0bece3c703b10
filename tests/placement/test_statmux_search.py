"""statmux's search against the faithful AlpaServe on small generated settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from statmux.placement.planner import build_problem, run_policy
from statmux.placement.scenarios import BERT_MIX, mixed, modelset
from statmux.placement.spec import load_modelset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def compare(ms) -> tuple[float, float]:
    problem = build_problem(ms.spec)
    ours = run_policy(problem, "statmux").attainment
    theirs = run_policy(problem, "alpaserve").attainment
    return ours, theirs


@pytest.mark.parametrize(
    "profiles,gpus,rate,cv,slo",
    [
        (["bert-1.3b"] * 12, 8, 24.0, 4.0, 5.0),  # S1 shape
        (mixed(BERT_MIX, 9), 8, 12.0, 4.0, 5.0),  # S3 shape, mixed sizes
        (["bert-1.3b"] * 16, 4, 16.0, 4.0, 5.0),  # many models on few GPUs
        (mixed(BERT_MIX, 9), 8, 12.0, 8.0, 2.0),  # high CV, tight SLO
    ],
)
def test_statmux_at_least_alpaserve(profiles, gpus, rate, cv, slo) -> None:
    ms = modelset(
        profiles,
        gpus=gpus,
        rate=rate,
        cv=cv,
        slo_scale=slo,
        duration=120,
        split="powerLaw",
        exponent=0.5,
    )
    ours, theirs = compare(ms)
    assert ours >= theirs - 1e-9


@pytest.mark.parametrize("memory", ["1Gi", "2Gi", "3Gi", "6Gi", "13Gi"])
def test_tight_memory_never_below_alpaserve(memory: str) -> None:
    """From barely fits (at 1 GiB only 3 of the 8 models fit at all) to roomy (issue 10 #6:
    the old default scored 39.5 / 62.7 % at 1 / 2 GiB against alpaserve's 51.3 / 72.2 %).
    The search itself, not the baseline guard of `statmux plan`."""
    ms = load_modelset(EXAMPLES / "demo.yaml")
    ms.spec.cluster.gpu_memory = memory
    ms.spec.workload.duration_seconds = 120
    problem = build_problem(ms.spec)
    ours = run_policy(problem, "statmux")
    theirs = run_policy(problem, "alpaserve")
    assert ours.attainment >= theirs.attainment - 1e-9

    def placed(ev) -> set[str]:
        return {m for g in ev.result.placement.groups for m in g.models}

    assert len(placed(ours)) >= len(placed(theirs))
    if memory in ("6Gi", "13Gi"):  # below, the 32 GB of weights cannot all fit on 8 GPUs
        assert placed(ours) == set(problem.models)


@pytest.mark.parametrize("max_requests", [10_000, 6_000])
def test_sampled_search_is_within_tolerance_of_full(max_requests: int) -> None:
    """A sample is a speed technique: the plan it picks scores within 0.05 points of the
    full search's on the whole workload, either way (the bundled demo, 13 801 requests;
    before the final local search ran on the whole workload, 6 000 drifted by 0.11)."""
    ms = load_modelset(EXAMPLES / "demo.yaml")
    full = run_policy(build_problem(ms.spec), "statmux").attainment
    sampled = run_policy(build_problem(ms.spec, max_requests=max_requests), "statmux")
    assert sampled.sim.n_requests == len(build_problem(ms.spec).evaluator())  # scored whole
    assert abs(sampled.attainment - full) <= 0.0005


def test_a_sampled_search_refines_on_the_whole_workload() -> None:
    """The last step that moves replicas scores its moves on the whole workload: the problem
    it gets is the sampled one's whole workload, and its simulations count for the search."""
    ms = load_modelset(EXAMPLES / "demo.yaml")
    problem = build_problem(ms.spec, max_requests=6_000)
    whole = problem.on_whole_workload()
    assert whole is not problem and whole is problem.on_whole_workload()
    assert whole.workload is problem.eval_workload and whole.eval_workload is None
    assert len(problem.simulator()) < len(whole.simulator()) == len(problem.evaluator())
    unsampled = build_problem(ms.spec)
    assert unsampled.on_whole_workload() is unsampled
    before = problem.simulations
    run_policy(problem, "statmux")
    assert whole.simulations > 0 and problem.simulations - before >= whole.simulations


def test_one_cluster_starts_from_alpaserves_greedy_on_the_best_screened_partition() -> None:
    """With one latency cluster the fills are budgeted; AlpaServe's own greedy on the screen's
    best partition always runs, so a budget can never leave statmux below it (it did on this
    S1-shaped set, by one request, before)."""
    from statmux.placement.alpaserve import fast_greedy
    from statmux.placement.plan import Group
    from statmux.placement.statmux_search import StatmuxSearch

    ms = modelset(
        ["bert-1.3b"] * 12, gpus=8, rate=24.0, duration=120, split="powerLaw", exponent=0.5
    )
    problem = build_problem(ms.spec)
    search = StatmuxSearch(problem)
    ours = search.run()
    best = search.screen(problem.models, problem.num_gpus)[0]
    theirs = fast_greedy(problem, [Group(g.config) for g in best.placement.groups], problem.models)
    assert problem.attainment(ours) >= problem.attainment(theirs)
