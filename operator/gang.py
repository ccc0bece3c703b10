"""Gang restarts of StatefulSet groups: one broken member recreates the whole group.

A serving group is one torch.distributed world: when a member pod fails, restarts or is
deleted, the survivors cannot continue (the collective would hang), so every pod of the
group must start again together. LeaderWorkerSet does this itself
(RecreateGroupOnPodRestart); for StatefulSet groups the operator does it:

- the group's StatefulSet template carries a gang epoch annotation (statmux.io/gang-epoch)
  and uses the OnDelete update strategy, so pods are recreated from the template only when
  deleted;
- a failing pod of the current epoch bumps the epoch and deletes every pod of an older one;
- events of pods from an older epoch are the restart itself and are ignored, so handling an
  event twice (or after a crash) is safe; `converge` finishes an interrupted restart with
  `delete_stale_gang_pods`.

Back-off: deleting the crashed pod also deletes kubelet's CrashLoopBackOff for it, so a group
that can never start (a missing checkpoint) would be recreated every few seconds forever.
The first restart of a group is immediate (a transient fault heals fast); after n restarts
in a row the next one waits `cfg.gang_restart_delay(n)` from the failure (10 s doubling to
5 min by default). Meanwhile the failure is recorded as pending on the StatefulSet and the
failed pod is left alone (kubelet's own back-off applies to it); `resync_gang`, run by the
resync timer, restarts the group when the time comes even if no further pod event arrives,
and resets the count once the group has stayed ready for `gang_restart_stable_seconds`.
All of this state lives in the StatefulSet's annotations (statmux.io/gang-*), so an operator
restart neither forgets a back-off nor restarts twice, and a repeated event neither restarts
again nor moves the pending restart's time. Each write carries the resourceVersion it was
decided on (`Conflict` when the StatefulSet changed since), so a decision made on a stale
read is made again instead of landing on a newer epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from statmux.contract import (
    ANNOTATION_GANG_EPOCH,
    ANNOTATION_GANG_FAILED_AT,
    ANNOTATION_GANG_PENDING,
    ANNOTATION_GANG_READY_SINCE,
    ANNOTATION_GANG_RESTARTS,
    ANNOTATION_LAST_FAILURE,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODELSET,
    LABEL_WORKLOAD,
    MANAGER,
)
from statmux.operator.config import OperatorConfig
from statmux.operator.kinds import POD, STATEFULSET
from statmux.operator.kube import Api, Conflict
from statmux.operator.pod_failures import pod_failure
from statmux.operator.resources import Obj, Owner
from statmux.operator.status import now_iso, parse_iso

log = logging.getLogger("statmux.operator")
CONFLICT_RETRIES = 5  # reads and decisions again when the StatefulSet changed in between


def gang_epoch(obj: Obj | None) -> int:
    """The gang epoch of a StatefulSet's template or of a pod (0 when never bumped)."""
    if not obj:
        return 0
    if obj.get("kind") == "StatefulSet":
        template = (obj.get("spec") or {}).get("template") or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
    else:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(ANNOTATION_GANG_EPOCH, 0))
    except (TypeError, ValueError):
        return 0


def delete_stale_gang_pods(
    api: Api, ns: str, owner: Owner, workload: str, sts: Obj | None
) -> list[str]:
    """Finish an interrupted gang restart: pods of an older epoch must not keep running.

    Only *older* epochs: `sts` may be a snapshot taken just before a concurrent restart
    bumped the epoch, and the pods of that newer epoch are the healthy recreated group.
    """
    if not sts:
        return []
    epoch = gang_epoch(sts)
    gone = []
    for pod in api.list(POD, ns, {LABEL_MODELSET: owner.name, LABEL_WORKLOAD: workload}):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if gang_epoch(pod) < epoch and api.delete(POD, ns, pod["metadata"]["name"]):
            gone.append(pod["metadata"]["name"])
    return gone


def gang_failure(event_type: str, pod: Obj) -> str | None:
    """Why this pod event breaks its group (None when it does not)."""
    if event_type == "DELETED" or pod.get("metadata", {}).get("deletionTimestamp"):
        return "a member pod was deleted"
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return "a member pod failed"
    for c in status.get("containerStatuses") or []:
        if int(c.get("restartCount") or 0) > 0:
            return f"container {c.get('name')} of a member pod restarted"
    return None


def _owning_statefulset(pod: Obj) -> str | None:
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "StatefulSet":
            return str(ref.get("name"))
    return None


def handle_pod_event(
    api: Api,
    event_type: str,
    pod: Obj,
    cfg: OperatorConfig | None = None,
    now: datetime | None = None,
    on_defer: Callable[[str], None] | None = None,
) -> list[str]:
    """Gang semantics for StatefulSet groups: one broken member recreates the whole group.

    Bumps the StatefulSet's gang epoch (pods are recreated from the template, OnDelete)
    and deletes every pod of the old epoch, unless the group's back-off says to wait: then
    the failure is recorded as pending (once; `resync_gang` restarts when it is due).
    Events of pods from an older epoch are the restart itself and are ignored, which makes
    this safe to re-run. Returns the deleted pod names (none while backing off).
    `on_defer` gets one message per postponed failure (the handler posts it as an event,
    so that a restart that waits is visible where the immediate ones are).
    """
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGER or labels.get(LABEL_COMPONENT) != "group":
        return []
    sts_name = _owning_statefulset(pod)
    reason = gang_failure(event_type, pod)
    if sts_name is None or reason is None:
        return []
    ns = meta["namespace"]
    cfg = cfg or OperatorConfig()
    now = now or datetime.now(UTC)
    # The failed pod is deleted by the restart: keep why on the StatefulSet for the status.
    detail = pod_failure(pod) or f"pod {meta.get('name')}: {reason}"
    for _ in range(CONFLICT_RETRIES):
        sts = api.get(STATEFULSET, ns, sts_name)
        if not sts or sts["metadata"].get("deletionTimestamp"):
            return []  # the group itself is going away (rollout or ModelSet deletion)
        if gang_epoch(pod) != gang_epoch(sts):
            return []  # an older epoch's pod: this is the restart itself
        state = gang_state(sts)
        due = state.due(cfg, now)
        try:
            if now < due:
                if state.pending is None:  # a repeated event must not move the due time
                    deferred = _defer(api, ns, sts, state, detail, due, now)
                    if deferred and on_defer is not None:
                        on_defer(deferred)
                return []
            log.debug("%s event of %s: %s", event_type, meta.get("name"), reason)
            modelset, workload = labels.get(LABEL_MODELSET, ""), labels.get(LABEL_WORKLOAD, "")
            return _restart(api, ns, sts, modelset, workload, detail)[0]
        except Conflict:
            continue  # written since we read it (maybe restarted): decide again on the new one
    log.warning("gang: %s/%s kept changing; leaving %s to the timer", ns, sts_name, detail)
    return []


# --------------------------------------------------------------------------- back-off
@dataclass(frozen=True)
class GangState:
    """A group's restart back-off, as kept on its StatefulSet's annotations."""

    restarts: int = 0  # gang restarts in a row (reset once the group stays ready)
    pending: str | None = None  # the failure whose restart waits for the back-off
    failed_at: datetime | None = None  # when that failure was first seen
    ready_since: datetime | None = None  # ready without a failure since (only with restarts)

    def due(self, cfg: OperatorConfig, now: datetime) -> datetime:
        """When a restart may happen: the pending failure's, else one for a failure seen now."""
        if self.pending is not None:
            if self.failed_at is None:  # an unreadable time: do not wait forever
                return now
            seen = self.failed_at
        else:
            seen = now
        return seen + timedelta(seconds=cfg.gang_restart_delay(self.restarts))


def gang_state(sts: Obj | None) -> GangState:
    annotations = ((sts or {}).get("metadata") or {}).get("annotations") or {}
    try:
        restarts = max(0, int(annotations.get(ANNOTATION_GANG_RESTARTS, 0)))
    except (TypeError, ValueError):
        restarts = 0
    return GangState(
        restarts=restarts,
        pending=annotations.get(ANNOTATION_GANG_PENDING),
        failed_at=parse_iso(annotations.get(ANNOTATION_GANG_FAILED_AT)),
        ready_since=parse_iso(annotations.get(ANNOTATION_GANG_READY_SINCE)),
    )


def backoff_note(sts: Obj | None, cfg: OperatorConfig, now: datetime) -> str | None:
    """What the ModelSet's Degraded condition says about a group that is backing off."""
    state = gang_state(sts)
    if state.pending is None:
        return None
    n = state.restarts
    return (
        f"backing off after {n} gang restart{'' if n == 1 else 's'} in a row, "
        f"next restart at {now_iso(state.due(cfg, now))}"
    )


def _patch(api: Api, ns: str, sts: Obj, patch: Obj) -> Obj | None:
    """Merge-patch the StatefulSet only if it is still the one the decision was made on
    (its resourceVersion; `Conflict` otherwise): a decision from a stale read, such as
    deferring a restart another handler has just done, must not land on the new epoch."""
    meta = sts["metadata"]
    if meta.get("resourceVersion"):
        patch = {**patch, "metadata": {**patch.get("metadata", {}), **_version(meta)}}
    return api.merge_patch(STATEFULSET, ns, meta["name"], patch)


def _version(meta: Obj) -> dict[str, str]:
    return {"resourceVersion": str(meta["resourceVersion"])}


def _annotate(api: Api, ns: str, sts: Obj, annotations: dict[str, str | None]) -> Obj | None:
    # merge patch: None removes the key; other annotations (SSA's) are left alone
    return _patch(api, ns, sts, {"metadata": {"annotations": annotations}})


def _defer(
    api: Api, ns: str, sts: Obj, state: GangState, detail: str, due: datetime, now: datetime
) -> str | None:
    """Record the failure as pending; returns what was postponed (None if not written)."""
    pending: dict[str, str | None] = {
        ANNOTATION_GANG_PENDING: detail,
        ANNOTATION_GANG_FAILED_AT: now_iso(now),
        ANNOTATION_GANG_READY_SINCE: None,
    }
    if _annotate(api, ns, sts, pending) is None:
        return None
    n = state.restarts
    message = (
        f"group {sts['metadata']['name']} broke again after {n} gang restart"
        f"{'' if n == 1 else 's'} in a row; backing off until {now_iso(due)}: {detail}"
    )
    log.info("gang restart in %s: %s", ns, message)
    return message


def _restart(
    api: Api, ns: str, sts: Obj, modelset: str, workload: str, detail: str
) -> tuple[list[str], Obj]:
    """Bump the epoch and count the restart in one patch, then delete the old epoch's pods.
    Returns the deleted pods and the patched StatefulSet."""
    name = sts["metadata"]["name"]
    new_epoch = str(gang_epoch(sts) + 1)
    restarts = gang_state(sts).restarts + 1
    note = f"{detail} (gang restart {new_epoch}; {restarts} in a row)"
    patched = _patch(
        api,
        ns,
        sts,
        {
            "metadata": {
                "annotations": {
                    ANNOTATION_LAST_FAILURE: note,
                    ANNOTATION_GANG_RESTARTS: str(restarts),
                    ANNOTATION_GANG_PENDING: None,
                    ANNOTATION_GANG_FAILED_AT: None,
                    ANNOTATION_GANG_READY_SINCE: None,
                }
            },
            "spec": {"template": {"metadata": {"annotations": {ANNOTATION_GANG_EPOCH: new_epoch}}}},
        },
    )
    if patched is None:
        return [], sts
    log.info(
        "gang restart of %s/%s (epoch %s, %d in a row): %s", ns, name, new_epoch, restarts, detail
    )
    return delete_stale_gang_pods(api, ns, Owner(modelset, ns, ""), workload, patched), patched


def resync_gang(
    api: Api,
    ns: str,
    owner: Owner,
    workload: str,
    sts: Obj | None,
    ready: bool,
    cfg: OperatorConfig,
    now: datetime,
) -> tuple[list[str], Obj | None]:
    """The timer's part of the back-off for one StatefulSet group: restart it when its
    pending restart is due, and reset the count once it has stayed ready long enough.

    Returns the pods a restart deleted and the StatefulSet as it is now. Writes nothing
    for a group that has not restarted since its count was last reset. A concurrent write
    (a pod event's) makes it do nothing this time: the next tick decides on the new state.
    """
    if not sts or sts["metadata"].get("deletionTimestamp"):
        return [], sts
    try:
        return _resync_gang(api, ns, owner, workload, sts, ready, cfg, now)
    except Conflict:
        return [], api.get(STATEFULSET, ns, sts["metadata"]["name"])


def _resync_gang(
    api: Api,
    ns: str,
    owner: Owner,
    workload: str,
    sts: Obj,
    ready: bool,
    cfg: OperatorConfig,
    now: datetime,
) -> tuple[list[str], Obj | None]:
    state = gang_state(sts)
    if state.pending is not None:
        if now < state.due(cfg, now):
            return [], sts
        # No pod event may come (kubelet backs off the crashed pod too): restart from here.
        return _restart(api, ns, sts, owner.name, workload, state.pending)
    if state.restarts == 0:
        return [], sts
    if not ready:
        if state.ready_since is not None:
            sts = _annotate(api, ns, sts, {ANNOTATION_GANG_READY_SINCE: None}) or sts
        return [], sts
    if state.ready_since is None:
        sts = _annotate(api, ns, sts, {ANNOTATION_GANG_READY_SINCE: now_iso(now)}) or sts
    elif (now - state.ready_since).total_seconds() >= cfg.gang_restart_stable_seconds:
        log.info("%s/%s stayed ready: its gang restart count starts again", ns, workload)
        reset: dict[str, str | None] = {
            ANNOTATION_GANG_RESTARTS: None,
            ANNOTATION_GANG_READY_SINCE: None,
        }
        sts = _annotate(api, ns, sts, reset) or sts
    return [], sts
