"""Status conditions: transitions, readiness, invalid specs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from statmux.operator.status import (
    Condition,
    Readiness,
    condition_status,
    invalid_spec_conditions,
    merge_conditions,
    planned_conditions,
    readiness_conditions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_transition_time_moves_only_when_status_flips() -> None:
    c1 = merge_conditions(None, [Condition("Ready", False, "A", "x")], 1, T0)
    c2 = merge_conditions(c1, [Condition("Ready", False, "B", "y")], 2, T0 + timedelta(hours=1))
    assert c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"]
    assert (c2[0]["reason"], c2[0]["observedGeneration"]) == ("B", 2)
    c3 = merge_conditions(c2, [Condition("Ready", True, "C", "z")], 2, T0 + timedelta(hours=2))
    assert c3[0]["lastTransitionTime"] != c2[0]["lastTransitionTime"]
    assert c3[0]["status"] == "True"


def test_conditions_keep_order_and_unrelated_types() -> None:
    c = merge_conditions(
        None, [Condition("Degraded", False, "A", ""), Condition("PlanReady", True, "P", "")]
    )
    c = merge_conditions(c, [Condition("Ready", True, "R", "")])
    assert [x["type"] for x in c] == ["PlanReady", "Ready", "Degraded"]


def test_invalid_spec_names_the_field() -> None:
    msg = "spec is invalid:\nspec.cluster.gpus: Input should be greater than or equal to 1"
    c = merge_conditions(None, invalid_spec_conditions(msg))
    assert condition_status(c, "PlanReady") == "False"
    assert condition_status(c, "Degraded") == "True"
    assert condition_status(c, "Ready") == "False"
    assert any("spec.cluster.gpus" in x["message"] for x in c)


def test_readiness() -> None:
    waiting = readiness_conditions(Readiness(3, 1, True, ("g1", "g2")), plan_ready=True)
    by = {c.type: c for c in waiting}
    assert not by["GroupsReady"].status and "1/3" in by["GroupsReady"].message
    assert "g2" in by["GroupsReady"].message and not by["Ready"].status
    ok = {c.type: c for c in readiness_conditions(Readiness(3, 3, True), plan_ready=True)}
    assert ok["GroupsReady"].status and ok["Ready"].status and not ok["Degraded"].status
    no_router = {c.type: c for c in readiness_conditions(Readiness(3, 3, False), True)}
    assert not no_router["Ready"].status and no_router["Ready"].reason == "RouterNotReady"
    no_plan = {c.type: c for c in readiness_conditions(Readiness(3, 3, True), plan_ready=False)}
    assert not no_plan["Ready"].status and "Degraded" not in no_plan


def test_unplaced_models_make_the_modelset_degraded() -> None:
    conds = readiness_conditions(Readiness(2, 2, True), True, ["bert-c", "bert-d"])
    degraded = next(c for c in conds if c.type == "Degraded")
    assert degraded.status and degraded.reason == "UnplacedModels"
    assert "bert-c, bert-d" in degraded.message
    assert degraded.message.endswith("raise cluster.gpuMemory or cluster.gpus")
    conds = readiness_conditions(Readiness(2, 2, True), True, ["bert-c"], "add GPUs for bert-c")
    degraded = next(c for c in conds if c.type == "Degraded")
    assert degraded.message.endswith("fail every request: bert-c; add GPUs for bert-c")


def test_plan_warnings_reach_the_plan_ready_message() -> None:
    from plans import make_test_plan  # tests/helpers, on the path via conftest

    plan = make_test_plan([(1, 1, ["a"])]).model_copy(
        update={"warnings": ["the trace spans 7200 s; planned on the first 3600 s"]}
    )
    c = planned_conditions(plan)[0]
    assert c.status and "warning: the trace spans 7200 s; planned on the first 3600 s" in c.message
