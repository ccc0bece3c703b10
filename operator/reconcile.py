"""Reconcile one ModelSet: plan, apply the desired objects, roll groups, report status.

Plain functions over the `Api` protocol (statmux.operator.kube); the kopf handlers in
statmux.operator.handlers only unpack kopf's arguments and call these.

Idempotence: every object has a deterministic name and is written with server-side apply,
so re-running after a crash converges to the same objects; objects labelled for this
ModelSet that the current plan does not name are deleted (old groups only once the new
groups are ready, see `converge`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from statmux.contract import (
    ANNOTATION_GANG_PENDING,
    ANNOTATION_LAST_FAILURE,
    ANNOTATION_SPEC_HASH,
    LABEL_COMPONENT,
    LABEL_MODELSET,
    LABEL_WORKLOAD,
    PLAN_KEY,
)
from statmux.operator.config import OperatorConfig
from statmux.operator.gang import backoff_note, delete_stale_gang_pods, gang_epoch, resync_gang
from statmux.operator.kinds import (
    CONFIGMAP,
    DEPLOYMENT,
    LEADERWORKERSET,
    MANAGED,
    POD,
    kind_of,
)
from statmux.operator.kube import Api
from statmux.operator.planning import plan_for
from statmux.operator.pod_failures import pod_failure
from statmux.operator.resources import (
    GroupWorkload,
    Obj,
    Owner,
    WorkloadKind,
    desired_objects,
    group_workloads,
    plan_configmap_name,
    selector_for,
)
from statmux.operator.status import (
    PLAN_READY,
    Readiness,
    condition_status,
    invalid_spec_conditions,
    merge_conditions,
    now_iso,
    parse_iso,
    plan_status,
    planned_conditions,
    readiness_conditions,
)
from statmux.placement.plan import Plan, PlanError, short_hash
from statmux.placement.spec import ModelSetSpec, SpecError, parse_spec

log = logging.getLogger("statmux.operator")

# (name, namespace, spec, the plan in use or None) -> the new plan
Planner = Callable[[str, str, ModelSetSpec, Plan | None], Plan]


# --------------------------------------------------------------------------- helpers
def spec_hash(spec: Obj) -> str:
    """Which spec a stored plan answers (not the plan hash: that covers the groups)."""
    return short_hash(spec, 16)


def choose_workload_kind(api: Api, cfg: OperatorConfig) -> WorkloadKind:
    if cfg.workload == "statefulset":
        return "StatefulSet"
    if cfg.workload == "leaderworkerset" or api.served(LEADERWORKERSET):
        return "LeaderWorkerSet"
    return "StatefulSet"


def workload_ready(obj: Obj | None, gw: GroupWorkload) -> tuple[bool, int]:
    """(ready, ready pods) of a group's StatefulSet or LeaderWorkerSet."""
    if not obj:
        return False, 0
    st = obj.get("status") or {}
    if obj.get("kind") == "LeaderWorkerSet":
        ready = int(st.get("readyReplicas") or 0) >= 1
        return ready, gw.pods if ready else 0
    ready_pods = int(st.get("readyReplicas") or 0)
    current = int(st.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation", 1))
    return current and ready_pods >= gw.pods, ready_pods


def deployment_available(obj: Obj | None) -> bool:
    st = (obj or {}).get("status") or {}
    return int(st.get("availableReplicas") or 0) >= 1


# --------------------------------------------------------------------------- converge
@dataclass
class Outcome:
    readiness: Readiness
    groups: list[Obj]
    rollout: Obj | None
    deleted: list[str] = field(default_factory=list)
    gang_restarts: list[str] = field(default_factory=list)  # workloads the back-off restarted


def _delete_workload_objects(
    api: Api, namespace: str, by_workload: dict[str, list[Obj]], name: str
) -> list[str]:
    gone = []
    # Workloads first (their pods stop), then the Service, ConfigMap and PodGroup.
    objs = sorted(
        by_workload[name], key=lambda o: o["kind"] not in ("StatefulSet", "LeaderWorkerSet")
    )
    for obj in objs:
        if api.delete(kind_of(obj), namespace, obj["metadata"]["name"]):
            gone.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return gone


def _workload_gpus(objs: list[Obj]) -> int:
    for o in objs:
        if o["kind"] == "StatefulSet":
            spec = o.get("spec", {})
            res = spec["template"]["spec"]["containers"][0].get("resources", {})
            per_pod = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
            return per_pod * int(spec.get("replicas", 0))
    return 0


def group_failure(
    api: Api,
    ns: str,
    owner: Owner,
    workload: str,
    obj: Obj | None,
    cfg: OperatorConfig | None = None,
    now: datetime | None = None,
) -> str | None:
    """Why a group that is not ready fails: a pod's container state (CrashLoopBackOff, an
    exit code), else the failure its pending gang restart waits on, else the reason of its
    last gang restart, which deleted the failed pod; while the gang restart backs off, when
    it happens next. None while it is merely starting."""
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    why = None
    for pod in api.list(POD, ns, {LABEL_MODELSET: owner.name, LABEL_WORKLOAD: workload}):
        why = pod_failure(pod)
        if why:
            break
    if not why:
        why = annotations.get(ANNOTATION_GANG_PENDING)
    if not why:
        last = annotations.get(ANNOTATION_LAST_FAILURE)
        why = f"restarting after {last}" if last else None
    note = backoff_note(obj, cfg or OperatorConfig(), now or datetime.now(UTC))
    if why and note:
        why += f"; {note}"
    return why


def converge(
    api: Api,
    owner: Owner,
    plan: Plan,
    cfg: OperatorConfig,
    kind: WorkloadKind,
    gpu_product: str | None,
    rollout: Obj | None,
    now: datetime | None = None,
    spec_digest: str | None = None,
) -> Outcome:
    """Make the cluster hold exactly this plan's objects, rolling groups safely.

    Rollout: new groups get new names (their hash), so they are created next to the old
    ones. Old groups are deleted only when every new group is ready; if that takes longer
    than `rollout_timeout_seconds` (e.g. no free GPUs for both), old groups retire one per
    call, largest first, so the new ones can schedule — never all capacity at once.
    """
    now = now or datetime.now(UTC)
    ns = owner.namespace
    ph = plan.plan_hash
    desired = desired_objects(owner, plan, cfg, kind, gpu_product)
    if spec_digest:
        # Marks which spec this plan answers, so a resume does not search again.
        desired[0]["metadata"]["annotations"] = {ANNOTATION_SPEC_HASH: spec_digest}
    applied: dict[tuple[str, str], Obj] = {}
    for obj in desired:
        applied[(obj["kind"], obj["metadata"]["name"])] = api.apply(obj)

    gws = group_workloads(owner, plan, cfg, kind, gpu_product)
    groups_status: list[Obj] = []
    not_ready: list[str] = []
    failing: list[str] = []
    gang_restarts: list[str] = []
    for gw in gws:
        workload = applied.get((kind, gw.name))
        ready, ready_pods = workload_ready(workload, gw)
        if kind == "StatefulSet":
            delete_stale_gang_pods(api, ns, owner, gw.name, workload)
            before = gang_epoch(workload)
            _, workload = resync_gang(api, ns, owner, gw.name, workload, ready, cfg, now)
            if gang_epoch(workload) != before:  # its pending restart was due: recreated just now
                gang_restarts.append(gw.name)
                ready, ready_pods = False, 0
        if not ready:
            not_ready.append(gw.group)
            why = group_failure(api, ns, owner, gw.name, workload, cfg, now)
            if why:
                failing.append(f"group {gw.group}: {why}")
        groups_status.append(
            {
                "name": gw.group,
                "gpus": gw.gpus,
                "pp": gw.pp,
                "tp": gw.tp,
                "models": list(gw.models),
                "workload": gw.name,
                "pods": gw.pods,
                "readyPods": ready_pods,
                "ready": ready,
            }
        )
    router = applied.get((DEPLOYMENT.kind, f"{owner.name}-router"))

    # Everything labelled for this ModelSet that the plan does not name.
    wanted = set(applied)
    by_workload: dict[str, list[Obj]] = {}
    deleted: list[str] = []
    for k in MANAGED:
        if k.group not in ("", "apps") and not api.served(k):
            continue
        for obj in api.list(k, ns, selector_for(owner)):
            key = (obj["kind"], obj["metadata"]["name"])
            if key in wanted or obj["metadata"].get("deletionTimestamp"):
                continue
            labels = obj["metadata"].get("labels") or {}
            if labels.get(LABEL_COMPONENT) == "group" and labels.get(LABEL_WORKLOAD):
                by_workload.setdefault(labels[LABEL_WORKLOAD], []).append(obj)
            elif api.delete(k, ns, obj["metadata"]["name"]):
                deleted.append(f"{obj['kind']}/{obj['metadata']['name']}")

    retiring = sorted(by_workload)
    new_rollout: Obj | None = None
    if retiring:
        if not not_ready:
            for name in retiring:
                deleted += _delete_workload_objects(api, ns, by_workload, name)
            retiring = []
        else:
            same = rollout is not None and rollout.get("planHash") == ph
            started = (parse_iso(rollout.get("startedAt")) if same and rollout else None) or now
            if (now - started).total_seconds() >= cfg.rollout_timeout_seconds:
                # Stuck (likely no room for old and new): free the largest old group.
                victim = max(retiring, key=lambda n: (_workload_gpus(by_workload[n]), n))
                log.info("rollout of %s/%s stuck; retiring %s", ns, owner.name, victim)
                deleted += _delete_workload_objects(api, ns, by_workload, victim)
                retiring.remove(victim)
                started = now  # give the freed GPUs a full timeout before the next one
            if retiring:
                new_rollout = {"planHash": ph, "startedAt": now_iso(started), "retiring": retiring}

    readiness = Readiness(
        groups=len(gws),
        ready_groups=len(gws) - len(not_ready),
        router_ready=deployment_available(router),
        not_ready=tuple(not_ready),
        retiring=tuple(retiring),
        failing=tuple(failing),
    )
    return Outcome(readiness, groups_status, new_rollout, deleted, gang_restarts)


# --------------------------------------------------------------------------- entry points
@dataclass
class Result:
    status: Obj  # the new .status (merge into the object's status)
    error: str | None = None  # a user mistake: report it, do not retry
    gang_restarts: list[str] = field(default_factory=list)  # groups restarted by the back-off


def _owner(name: str, namespace: str, uid: str) -> Owner:
    return Owner(name=name, namespace=namespace, uid=uid)


def current_plan(api: Api, owner: Owner) -> tuple[Plan | None, str | None]:
    """The plan in `<ms>-plan` and the spec hash it was planned from.

    The one place the operator parses a stored Plan; an unusable one (edited by hand, or
    written by an incompatible version) counts as none, so the spec is planned again."""
    name = plan_configmap_name(owner.name)
    cm = api.get(CONFIGMAP, owner.namespace, name)
    if not cm or PLAN_KEY not in (cm.get("data") or {}):
        return None, None
    annotations = cm["metadata"].get("annotations") or {}
    try:
        plan = Plan.parse_json(cm["data"][PLAN_KEY], f"ConfigMap {owner.namespace}/{name}")
    except PlanError as err:
        log.warning("ignoring the stored plan: %s", err)
        return None, None
    return plan, annotations.get(ANNOTATION_SPEC_HASH)


def reconcile(
    api: Api,
    cfg: OperatorConfig,
    owner: Owner,
    generation: int,
    spec: Obj,
    status: Obj | None,
    planner: Planner = plan_for,
    now: datetime | None = None,
) -> Result:
    """Create/update/resume: validate, plan (reusing the stored plan if the spec is the
    same), converge, and compute the status."""
    status = dict(status or {})
    conditions = status.get("conditions")
    try:
        parsed = parse_spec(spec)
        digest = spec_hash(spec)
        plan, planned_from = current_plan(api, owner)
        if plan is None or planned_from != digest:
            # the plan in use is the incumbent: a re-plan keeps it unless something scores higher
            plan = planner(owner.name, owner.namespace, parsed, plan)
            if plan.model_set != owner.name:
                plan = plan.model_copy(update={"model_set": owner.name})
    except SpecError as err:
        message = str(err)
        return Result(
            {
                "observedGeneration": generation,
                "conditions": merge_conditions(
                    conditions, invalid_spec_conditions(message), generation, now
                ),
            },
            error=message,
        )
    return _converge_status(
        api, cfg, owner, generation, plan, digest, parsed.cluster.gpu_product, status, now
    )


def resync(
    api: Api,
    cfg: OperatorConfig,
    owner: Owner,
    generation: int,
    spec: Obj,
    status: Obj | None,
    now: datetime | None = None,
) -> Result | None:
    """The periodic pass: re-apply the stored plan (heals deleted objects, finishes
    rollouts and gang restarts) and refresh readiness. None when a create/update handler
    still owns this generation or the spec is invalid (nothing new to say)."""
    status = dict(status or {})
    if status.get("observedGeneration") != generation:
        return None
    plan, digest = current_plan(api, owner)
    if plan is None or digest is None or digest != spec_hash(spec):
        return None
    try:
        gpu_product = parse_spec(spec).cluster.gpu_product
    except SpecError:
        gpu_product = None
    return _converge_status(api, cfg, owner, generation, plan, digest, gpu_product, status, now)


def _converge_status(
    api: Api,
    cfg: OperatorConfig,
    owner: Owner,
    generation: int,
    plan: Plan,
    digest: str,
    gpu_product: str | None,
    status: Obj,
    now: datetime | None,
) -> Result:
    kind = choose_workload_kind(api, cfg)
    cm_name = plan_configmap_name(owner.name)
    outcome = converge(
        api,
        owner,
        plan,
        cfg,
        kind,
        gpu_product,
        status.get("rollout"),
        now,
        spec_digest=digest,
    )
    conditions = merge_conditions(
        status.get("conditions"), planned_conditions(plan), generation, now
    )
    plan_ok = condition_status(conditions, PLAN_READY) == "True"
    conditions = merge_conditions(
        conditions,
        readiness_conditions(outcome.readiness, plan_ok, plan.unplaced, plan.unplaced_advice()),
        generation,
        now,
    )
    new = plan_status(plan, cm_name) | {
        "observedGeneration": generation,
        "workloadKind": kind,
        "readyGroups": outcome.readiness.ready_groups,
        "groups": outcome.groups,
        "rollout": outcome.rollout,
        "conditions": conditions,
    }
    return Result(new, gang_restarts=outcome.gang_restarts)
