"""Status conditions and the `.status` block the operator writes on a ModelSet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from statmux.placement.plan import Plan

PLAN_READY = "PlanReady"
GROUPS_READY = "GroupsReady"
READY = "Ready"
DEGRADED = "Degraded"
CONDITION_TYPES = (PLAN_READY, GROUPS_READY, READY, DEGRADED)


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # Kubernetes' metav1.Time (whole seconds, UTC)


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(TIME_FORMAT)


def parse_iso(text: str | None) -> datetime | None:
    """A time written by `now_iso` (None when absent or not one)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def merge_conditions(
    previous: list[dict[str, Any]] | None,
    updates: list[Condition],
    generation: int | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Apply `updates` to `previous`; lastTransitionTime changes only when status flips.

    Conditions not in `updates` are kept as they were; the result is ordered as
    CONDITION_TYPES (others after), so reconciling twice writes identical status.
    """
    by_type = {c["type"]: dict(c) for c in previous or [] if "type" in c}
    for u in updates:
        old = by_type.get(u.type)
        changed = old is None or old.get("status") != u.status_text
        cond: dict[str, Any] = {
            "type": u.type,
            "status": u.status_text,
            "reason": u.reason,
            "message": u.message,
            "lastTransitionTime": now_iso(now)
            if changed
            else old.get("lastTransitionTime", now_iso(now)),  # type: ignore[union-attr]
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        by_type[u.type] = cond
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], 99), c["type"]))


def condition_status(conditions: list[dict[str, Any]] | None, type_: str) -> str | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def invalid_spec_conditions(message: str) -> list[Condition]:
    """The spec failed validation or planning: say so, keep serving what runs already."""
    return [
        Condition(PLAN_READY, False, "InvalidSpec", message),
        Condition(READY, False, "InvalidSpec", "the spec is invalid; see PlanReady"),
        Condition(DEGRADED, True, "InvalidSpec", message),
    ]


def planned_conditions(plan: Plan) -> list[Condition]:
    gpus = sum(g.gpus for g in plan.groups)
    return [
        Condition(
            PLAN_READY,
            True,
            "Planned",
            f"policy {plan.policy}: {len(plan.groups)} groups on {gpus} GPUs, "
            f"predicted SLO attainment {plan.predicted.attainment:.3f}"
            + _incumbent_note(plan)
            # what `statmux plan` prints as warnings (e.g. a truncated trace) is not lost here
            + "".join(f"; warning: {w}" for w in plan.warnings),
        )
    ]


def _incumbent_note(plan: Plan) -> str:
    """What a re-plan did with the plan that was in use."""
    info = plan.search.incumbent
    if info is None:
        return ""
    if info.outcome == "ignored":
        return f"; the previous plan no longer fits: {info.reason}"
    why = f", {info.reason}" if info.reason else ""
    if info.outcome == "kept":
        return f"; kept the previous plan ({info.reason or 'no candidate scores higher'})"
    if info.outcome == "improved":
        return (
            f"; improved the previous plan by a local search from it (it scores "
            f"{info.attainment or 0.0:.3f}{why})"
        )
    return f"; replaced the previous plan (it scores {info.attainment or 0.0:.3f}{why})"


@dataclass(frozen=True)
class Readiness:
    """What the reconciler observed about the current plan's workloads."""

    groups: int
    ready_groups: int
    router_ready: bool
    not_ready: tuple[str, ...] = ()
    retiring: tuple[str, ...] = ()
    failing: tuple[str, ...] = ()  # "group g0: pod ... CrashLoopBackOff (...)", one per group


def readiness_conditions(
    r: Readiness,
    plan_ready: bool,
    unplaced: list[str] | tuple[str, ...] = (),
    advice: str = "raise cluster.gpuMemory or cluster.gpus",
) -> list[Condition]:
    """`advice`: what would place the unplaced models (Plan.unplaced_advice)."""
    all_groups = r.ready_groups == r.groups
    if all_groups:
        groups = Condition(GROUPS_READY, True, "AllGroupsReady", f"{r.groups} groups ready")
    else:
        waiting = ", ".join(r.not_ready[:8]) + (" ..." if len(r.not_ready) > 8 else "")
        groups = Condition(
            GROUPS_READY,
            False,
            "GroupsNotReady",
            f"{r.ready_groups}/{r.groups} groups ready; waiting for {waiting}",
        )
    ready = plan_ready and all_groups and r.router_ready
    if ready:
        msg = "serving the current plan"
        if r.retiring:
            msg += f"; retiring {len(r.retiring)} old groups"
        top = Condition(READY, True, "Ready", msg)
    elif not plan_ready:
        top = Condition(READY, False, "PlanNotReady", "no valid plan; see PlanReady")
    elif not all_groups:
        top = Condition(READY, False, "GroupsNotReady", groups.message)
    else:
        top = Condition(READY, False, "RouterNotReady", "the router Deployment is not available")
    out = [groups, top]
    problems: list[str] = []
    reason = ""
    if r.failing:
        reason = "GroupFailing"
        problems.append("; ".join(r.failing))
    if plan_ready and unplaced:
        reason = reason or "UnplacedModels"
        problems.append(
            f"{len(unplaced)} models get no replica and fail every request: "
            f"{', '.join(unplaced)}; {advice}"
        )
    if problems:
        out.append(Condition(DEGRADED, True, reason, "; ".join(problems)))
    elif plan_ready:
        out.append(Condition(DEGRADED, False, "AsExpected", "the spec is valid"))
    return out


def plan_status(plan: Plan, configmap: str) -> dict[str, Any]:
    """The printer-column fields and the plan summary for `.status`."""
    predicted = plan.predicted
    return {
        "policy": plan.policy,
        "planHash": plan.plan_hash,
        "planConfigMap": configmap,
        "gpus": sum(g.gpus for g in plan.groups),
        "groupCount": len(plan.groups),
        "predictedAttainment": predicted.attainment,
        "predicted": {
            "attainment": predicted.attainment,
            "perModel": dict(predicted.per_model),
            "goodput": predicted.goodput,
        },
    }
