"""Re-plans with the plan in use (the incumbent) are monotone in resources by construction.

A chain of plans, each step given the previous step's plan (`statmux plan --previous`, the
operator's re-plan), never lowers the attainment when GPUs or memory grow or the SLO is
loosened (the previous plan may keep its admission bound: see the last test), and is never
below the independent run of the same step. The
settings are ones where independent runs do drop (the search is only nearly monotone). An
incumbent that no longer fits is ignored with its reason, never an error."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from statmux.placement.incumbent import grew, improved_incumbent, incumbent_placement
from statmux.placement.plan import Group, Placement, Plan
from statmux.placement.planner import build_problem, plan_modelset
from statmux.placement.profile import ConfigProfile, ModelProfile, ParallelConfig
from statmux.placement.scenarios import BERT_MIX, mixed, modelset
from statmux.placement.simulator import Simulator
from statmux.placement.spec import ModelSet, load_modelset
from statmux.placement.workload import Workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def high_cv() -> ModelSet:
    """benchmarks/placement_vs_alpaserve.py's "high CV: S3, CV 8" (30 BERT, 300 s): its
    independent runs drop 0.28 points from 26 to 27 GPUs and 0.58 from 20 to 21 GiB."""
    return modelset(
        mixed(BERT_MIX, 30), gpus=24, rate=48, cv=8.0, duration=300, split="powerLaw", exponent=0.5
    )


def s3(**kw: object) -> ModelSet:
    """The benchmark's "S3: 30 BERT (3 sizes), 24 GPUs" (300 s)."""
    return modelset(
        mixed(BERT_MIX, 30), gpus=24, rate=48, duration=300, split="powerLaw", exponent=0.5, **kw
    )


def small(**kw: object) -> ModelSet:
    return modelset(
        mixed(BERT_MIX, 6), gpus=4, rate=8.0, duration=60, split="powerLaw", exponent=0.5, **kw
    )


def demo() -> ModelSet:
    ms = load_modelset(EXAMPLES / "demo.yaml")
    ms.spec.workload.duration_seconds = 60
    return ms


def chain(build: Callable[[object], ModelSet], steps: list[object]) -> list[tuple[Plan, Plan]]:
    """(re-plan given the previous step's plan, independent plan) per step."""
    out: list[tuple[Plan, Plan]] = []
    previous: Plan | None = None
    for step in steps:
        replanned = plan_modelset(build(step), "statmux", previous=previous)
        independent = replanned if previous is None else plan_modelset(build(step), "statmux")
        out.append((replanned, independent))
        previous = replanned
    return out


def assert_monotone(
    plans: list[tuple[Plan, Plan]], steps: list[object], same_workload: bool = True
) -> None:
    """same_workload: the steps change GPUs or memory only, so the incumbent's simulation is
    the very one that scored it before (a looser SLO changes deadlines and admission)."""
    for step, (before, (replanned, independent)) in zip(
        steps[1:], itertools.pairwise(plans), strict=True
    ):
        assert replanned.attainment >= before[0].attainment, step  # exactly, same simulator
        assert replanned.attainment >= independent.attainment, step
        info = replanned.search.incumbent
        assert info is not None and info.outcome in ("kept", "improved", "replaced"), step
        assert info.attainment is not None
        if same_workload:
            assert info.attainment == before[0].attainment, step
        else:  # a looser SLO: by its previous bound it scores what it scored
            assert info.attainment >= before[0].attainment, step
        if info.outcome == "kept":
            assert replanned.plan_hash == before[0].plan_hash or not same_workload, step
            assert replanned.groups == before[0].groups or not same_workload, step
        else:
            assert replanned.attainment > info.attainment, step


def with_gpus(ms: ModelSet, gpus: object) -> ModelSet:
    assert isinstance(gpus, int)
    ms.spec.cluster.gpus = gpus
    return ms


def with_memory(ms: ModelSet, memory: object) -> ModelSet:
    ms.spec.cluster.gpu_memory = str(memory)
    return ms


def test_more_gpus_never_lower_a_replan_where_independent_runs_drop() -> None:
    steps: list[object] = [26, 27]
    plans = chain(lambda g: with_gpus(high_cv(), g), steps)
    assert plans[1][1].attainment < plans[0][1].attainment  # the independent run drops here
    assert_monotone(plans, steps)


def test_the_extra_gpus_go_to_the_incumbent_when_the_search_scores_below_it() -> None:
    """CV 8 (30 BERT), 26 → 27 GPUs: the fresh search on 27 scores below the 26-GPU plan,
    which leaves 1 GPU idle. Kept as it was, the 2 idle GPUs would stay idle; the local search
    from it gives them replicas and scores higher. Its groups stay first and unchanged (their
    pods do not roll); the new groups use the idle GPUs."""
    (previous, _), (plan, independent) = chain(lambda g: with_gpus(high_cv(), g), [26, 27])
    info = plan.search.incumbent
    assert info is not None and info.outcome == "improved"
    assert info.attainment == previous.attainment
    assert independent.attainment < previous.attainment  # the search alone: below
    assert plan.attainment > previous.attainment  # the improvement: above
    used = sum(g.gpus for g in plan.groups)
    assert used > sum(g.gpus for g in previous.groups) and plan.idle_gpus == 27 - used
    assert plan.groups[: len(previous.groups)] == previous.groups
    # re-planned again with nothing changed: no growth, no local search, the same plan
    again = replan(with_gpus(high_cv(), 27), plan)
    assert again.search.incumbent is not None and again.search.incumbent.outcome == "kept"
    assert again.plan_hash == plan.plan_hash and again.groups == plan.groups


def test_an_unchanged_cluster_keeps_an_incumbent_with_idle_gpus() -> None:
    """The 26-GPU plan leaves a GPU idle; re-planned on the same cluster, the local search
    does not run (the cluster did not grow), so the plan and its hash stay."""
    previous = plan_modelset(with_gpus(high_cv(), 26), "statmux")
    assert previous.idle_gpus >= 1
    again = replan(with_gpus(high_cv(), 26), previous)
    assert again.search.incumbent is not None and again.search.incumbent.outcome == "kept"
    assert again.plan_hash == previous.plan_hash


@pytest.mark.parametrize(
    ("change", "grown"),
    [
        (lambda ms: ms, False),
        (lambda ms: with_gpus(ms, 5), True),
        (lambda ms: with_gpus(ms, 8), True),
        (lambda ms: with_memory(ms, "20Gi"), True),
        (lambda ms: with_memory(with_gpus(ms, 6), "16Gi"), True),
    ],
    ids=["same", "5 GPUs", "8 GPUs", "more memory", "both"],
)
def test_the_improvement_never_scores_below_the_incumbent(change: Callable, grown: bool) -> None:
    """The local search starts from the incumbent, so on the whole workload its answer
    scores at least the incumbent's; the planner only takes it when strictly higher."""
    previous = plan_modelset(small(), "statmux")
    problem = build_problem(change(small()).spec)
    assert grew(problem, previous) is grown
    kept = incumbent_placement(problem, previous)
    improved = improved_incumbent(problem, kept)
    score = problem.evaluator().attainment
    assert score(improved) >= score(kept)
    assert improved.gpus <= problem.num_gpus
    assert all(g.models for g in improved.groups)
    plan = replan(change(small()), previous)
    info = plan.search.incumbent
    assert info is not None and info.attainment == score(kept)
    assert plan.attainment >= score(kept)
    if info.outcome == "improved":  # the workload is the same: only growth runs it
        assert grown and plan.attainment == score(improved) > score(kept)


def test_more_memory_never_lowers_a_replan_where_independent_runs_drop() -> None:
    steps: list[object] = ["20Gi", "21Gi"]
    plans = chain(lambda m: with_memory(high_cv(), m), steps)
    assert plans[1][1].attainment < plans[0][1].attainment  # the independent run drops here
    assert_monotone(plans, steps)


@pytest.mark.parametrize(
    ("name", "build", "steps"),
    [
        ("demo GPUs", lambda g: with_gpus(demo(), g), [3, 4, 5, 6, 8]),
        ("demo memory", lambda m: with_memory(demo(), m), ["1Gi", "2Gi", "3Gi", "6Gi", "13Gi"]),
    ],
)
def test_a_replan_chain_never_drops(name: str, build: Callable, steps: list[object]) -> None:
    assert_monotone(chain(build, steps), steps)


def test_a_looser_slo_never_lowers_a_replan_where_independent_runs_drop() -> None:
    """A looser SLO changes every deadline, so the incumbent is scored anew, by the new SLO
    and by its previous bound (admissionSeconds): the better is at least its previous score.
    S3 (30 BERT, CV 4): independent runs drop 0.12 points from SLO 4.75x to 5x."""
    steps: list[object] = [4.75, 5.0]
    plans = chain(lambda s: s3(slo_scale=s), steps)
    assert plans[1][1].attainment < plans[0][1].attainment  # the independent run drops here
    assert_monotone(plans, steps, same_workload=False)


def test_a_changed_workload_improves_the_incumbent_on_the_same_cluster() -> None:
    """S3 (30 BERT), SLO 1.25x -> 1.5x on the same 24 GPUs: the workload changed (the
    incumbent scores other than its Plan predicted), so the local search from it runs too, and
    it beats both the incumbent and the fresh search (83.67 vs 83.52 and 83.33 % when
    measured). Re-planned again unchanged, it is kept with its hash."""
    previous = plan_modelset(s3(slo_scale=1.25), "statmux")
    plan = replan(s3(slo_scale=1.5), previous)
    info = plan.search.incumbent
    assert info is not None and info.outcome == "improved", info
    assert info.attainment is not None and plan.attainment > info.attainment + 0.001
    assert plan.attainment > plan_modelset(s3(slo_scale=1.5), "statmux").attainment
    assert sum(g.gpus for g in plan.groups) <= 24
    again = replan(s3(slo_scale=1.5), plan)
    assert again.search.incumbent is not None and again.search.incumbent.outcome == "kept"
    assert again.plan_hash == plan.plan_hash


def replan(ms: ModelSet, previous: Plan) -> Plan:
    return plan_modelset(ms, "statmux", previous=previous)


def without_first_model(ms: ModelSet) -> ModelSet:
    ms.spec.models.pop(0)
    return ms


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ms: with_gpus(ms, 3), "it uses 4 GPUs, the cluster has 3 (cluster.gpus)"),
        (lambda ms: with_memory(ms, "8Gi"), "over cluster.gpuMemory (8.00 GiB)"),
        (without_first_model, "'m000-bert-1-3b', no longer a model of the ModelSet"),
    ],
    ids=["fewer GPUs", "less memory", "a removed model"],
)
def test_an_incumbent_that_does_not_fit_is_ignored(change: Callable, reason: str) -> None:
    previous = plan_modelset(small(), "statmux")
    # one 4-GPU group holding every model (10.7 GiB per GPU): fits neither 3 GPUs nor 8 GiB
    assert [(g.gpus, len(g.models)) for g in previous.groups] == [(4, 6)]
    changed = change(small())
    plan = replan(changed, previous)
    info = plan.search.incumbent
    assert info is not None and info.outcome == "ignored" and info.attainment is None
    assert reason in info.reason
    independent = plan_modelset(change(small()), "statmux")
    assert plan.groups == independent.groups  # the search's answer, as without an incumbent
    assert plan.attainment == independent.attainment


def test_ties_keep_the_incumbent() -> None:
    """Re-planning the same ModelSet with its own plan: the search finds the same score, the
    incumbent stays, with identical groups and hash (no pod rolls)."""
    ms = small()
    first = plan_modelset(ms, "statmux")
    again = replan(small(), first)
    assert again.search.incumbent is not None and again.search.incumbent.outcome == "kept"
    assert again.groups == first.groups and again.plan_hash == first.plan_hash
    assert again.attainment == first.attainment


def test_an_incumbent_the_search_beats_is_replaced() -> None:
    """A poor previous plan (every model on one GPU): the search's plan wins."""
    ms = small()
    poor = plan_modelset(with_gpus(small(), 1), "statmux")
    plan = replan(ms, poor)
    info = plan.search.incumbent
    assert info is not None and info.outcome == "replaced"
    assert info.attainment is not None and plan.attainment > info.attainment


def with_min_gain(ms: ModelSet, points: float) -> ModelSet:
    ms.spec.placement.search.min_gain_to_replace = points
    return ms


def test_a_gain_within_min_gain_to_replace_keeps_the_plan_in_use() -> None:
    """placement.search.minGainToReplace: a re-plan rolls pods only for more than that many
    points; a smaller gain keeps the plan in use (same groups and hash) and says why."""
    poor = plan_modelset(with_gpus(small(), 1), "statmux")
    replaced = replan(with_min_gain(small(), 0.0), poor)
    assert replaced.search.incumbent is not None
    gain = 100 * (replaced.attainment - poor.attainment)
    assert replaced.search.incumbent.outcome == "replaced" and gain > 0.2
    kept = replan(with_min_gain(small(), round(gain + 0.1, 1)), poor)
    info = kept.search.incumbent
    assert info is not None and info.outcome == "kept", info
    assert kept.groups == poor.groups and kept.plan_hash == poor.plan_hash
    assert kept.attainment == poor.attainment
    assert f"a new plan scores {gain:.2f} points higher" in info.reason
    assert f"placement.search.minGainToReplace ({round(gain + 0.1, 1):g})" in info.reason
    just_under = replan(with_min_gain(small(), round(gain - 0.1, 1)), poor)
    assert just_under.search.incumbent is not None
    assert just_under.search.incumbent.outcome == "replaced"
    assert just_under.groups == replaced.groups


def test_min_gain_to_replace_also_holds_back_the_improvement() -> None:
    """The local search from the plan in use on a grown cluster adds pods too: it must clear
    the same bar (CV 8, 26 -> 27 GPUs improves by a fraction of a point)."""
    previous = plan_modelset(with_gpus(high_cv(), 26), "statmux")
    improved = replan(with_gpus(high_cv(), 27), previous)
    gain = 100 * (improved.attainment - previous.attainment)
    assert improved.search.incumbent is not None
    assert improved.search.incumbent.outcome == "improved" and gain > 0
    held = replan(with_min_gain(with_gpus(high_cv(), 27), gain + 0.5), previous)
    assert held.search.incumbent is not None and held.search.incumbent.outcome == "kept"
    assert held.groups == previous.groups and held.attainment == previous.attainment


def test_min_gain_to_replace_must_be_points_between_0_and_100() -> None:
    from statmux.placement.spec import SpecError, parse_modelset

    doc = small().model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["placement"]["search"] = {"minGainToReplace": -1}
    with pytest.raises(SpecError, match=r"placement\.search\.minGainToReplace"):
        parse_modelset(doc)


def five_of_six() -> tuple[Plan, str]:
    """The plan of `small()` without its last model (4 GPUs, all used), and that model."""
    fewer = small()
    fewer.spec.models.pop()
    return plan_modelset(fewer, "statmux"), small().spec.models[-1].name


def test_a_model_added_since_is_filled_into_the_incumbent() -> None:
    """The previous plan served 5 of the 6 models; the cluster grew by a GPU: the incumbent
    competes with the new model filled in, and the Plan says so."""
    previous, new = five_of_six()
    plan = replan(with_gpus(small(), 5), previous)
    assert new in plan.models and not plan.unplaced
    info = plan.search.incumbent
    assert info is not None and info.outcome in ("kept", "replaced")
    assert info.reason == f"with the models added since filled in: {new!r}"
    assert info.attainment is not None and plan.attainment >= info.attainment


def test_an_incumbent_without_room_for_a_new_model_does_not_compete() -> None:
    """No GPU and no memory left for the new model: the incumbent would leave it unplaced
    while the search places it, so it does not compete whatever it scores."""
    previous, new = five_of_six()
    plan = replan(small(), previous)
    assert new in plan.models and not plan.unplaced
    info = plan.search.incumbent
    assert info is not None and info.outcome == "replaced"
    assert info.reason == f"it leaves {new!r} (added since) unplaced; the search places it"
    assert plan.groups == plan_modelset(small(), "statmux").groups


def test_a_model_added_since_goes_to_an_idle_gpu_first() -> None:
    """Growing the cluster and the ModelSet together: the new model takes the idle GPU, so
    the incumbent's groups (and their pods) stay as they were."""
    fewer = small()
    fewer.spec.models.pop()
    previous = plan_modelset(fewer, "statmux")
    assert previous.idle_gpus == 0
    grown = with_gpus(small(), 5)
    new = grown.spec.models[-1].name
    placement = incumbent_placement(build_problem(grown.spec), previous)
    assert placement.groups[: len(previous.groups)] == previous.placement().groups
    added = placement.groups[len(previous.groups) :]
    assert [(g.config.gpus, g.models) for g in added] == [(1, [new])]


def test_another_policy_ignores_the_incumbent() -> None:
    ms = small()
    previous = plan_modelset(ms, "statmux")
    plan = plan_modelset(small(), "alpaserve", previous=previous)
    info = plan.search.incumbent
    assert info is not None and info.outcome == "ignored" and "alpaserve" in info.reason


def test_the_baseline_guard_and_the_incumbent_share_one_max() -> None:
    """With baselines (what `statmux plan` does by default) the plan is the best of search,
    incumbent and static baselines: a re-plan chain never drops and is never below a
    baseline, whether the incumbent is kept or not."""
    previous: Plan | None = None
    for gpus in [3, 4, 5, 6, 8]:
        ms = with_gpus(demo(), gpus)
        plan = plan_modelset(ms, "statmux", ("sr", "alpaserve"), None, previous)
        assert plan.attainment >= max(plan.predicted.baselines.values())
        if previous is not None:
            assert plan.attainment >= previous.attainment
            info = plan.search.incumbent
            assert info is not None and info.attainment == previous.attainment
        previous = plan


def test_a_looser_slo_can_lower_a_fixed_plans_attainment_unless_it_keeps_its_bound() -> None:
    """Why a re-plan may keep the previous plan's admission bound (admissionSeconds): with
    SLO-aware admission, a looser SLO admits a long request that the tighter one rejected,
    and it pushes two short ones past their deadlines (one group, models of 3 s and 1 s).
    Admitting by the previous SLO under the looser one serves the same requests again
    (tests/placement/test_cli.py plans it end to end)."""
    one = ParallelConfig(1, 1)

    def profile(name: str, seconds: float) -> ModelProfile:
        return ModelProfile(name, 1e9, {one: ConfigProfile(one, (1,), np.array([[seconds]]), 1e9)})

    profiles = {"long": profile("long", 3.0), "short": profile("short", 1.0)}
    # short at 0 (busy until 1), long at 0.5, short at 1, 2 and 3
    workload = Workload(
        ["long", "short"],
        np.array([0.0, 0.5, 1.0, 2.0, 3.0]),
        np.array([1, 0, 1, 1, 1], dtype=np.int32),
        4.0,
    )
    plan = Placement([Group(one, ["long", "short"])])
    scores = [
        Simulator(profiles, workload, {"long": 3.0 * s, "short": 1.0 * s}, 1).run(plan).attainment
        for s in (1.0, 2.0)
    ]
    # SLO 1x: the long request is rejected, every short one served (4 of 5); 2x: the long
    # one is admitted and served, the shorts at 1 and 2 miss (3 of 5)
    assert scores == [0.8, 0.6]
    bounded = Simulator(
        profiles,
        workload,
        {"long": 6.0, "short": 2.0},
        1,
        admission_seconds={"long": 3.0, "short": 1.0},
    ).run(plan)
    assert bounded.attainment == 0.8
    assert bounded.good.tolist() == [0, 4] and bounded.rejected.tolist() == [1, 0]
    with pytest.raises(ValueError, match="admission_seconds names unknown model"):
        Simulator(profiles, workload, {"long": 6.0, "short": 2.0}, admission_seconds={"x": 1})
