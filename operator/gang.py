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
"""

from __future__ import annotations

import logging

from statmux.contract import (
    ANNOTATION_GANG_EPOCH,
    ANNOTATION_LAST_FAILURE,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODELSET,
    LABEL_WORKLOAD,
    MANAGER,
)
from statmux.operator.kinds import POD, STATEFULSET
from statmux.operator.kube import Api
from statmux.operator.pod_failures import pod_failure
from statmux.operator.resources import Obj, Owner

log = logging.getLogger("statmux.operator")


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


def handle_pod_event(api: Api, event_type: str, pod: Obj) -> list[str]:
    """Gang semantics for StatefulSet groups: one broken member recreates the whole group.

    Bumps the StatefulSet's gang epoch (pods are recreated from the template, OnDelete)
    and deletes every pod of the old epoch. Events of pods from an older epoch are the
    restart itself and are ignored, which makes this safe to re-run. Returns the deleted
    pod names.
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
    sts = api.get(STATEFULSET, ns, sts_name)
    if not sts or sts["metadata"].get("deletionTimestamp"):
        return []  # the group itself is going away (rollout or ModelSet deletion)
    epoch = gang_epoch(sts)
    if gang_epoch(pod) != epoch:
        return []  # an older epoch's pod: this is the restart itself
    new_epoch = str(epoch + 1)
    log.info(
        "gang restart of %s/%s (epoch %s): %s (%s, %s event)",
        ns,
        sts_name,
        new_epoch,
        reason,
        meta.get("name"),
        event_type,
    )
    # The failed pod is deleted below: keep why on the StatefulSet for the ModelSet's status.
    detail = pod_failure(pod) or f"pod {meta.get('name')}: {reason}"
    note = f"{detail} (restart {new_epoch})"
    patched = api.merge_patch(
        STATEFULSET,
        ns,
        sts_name,
        {
            "metadata": {"annotations": {ANNOTATION_LAST_FAILURE: note}},
            "spec": {"template": {"metadata": {"annotations": {ANNOTATION_GANG_EPOCH: new_epoch}}}},
        },
    )
    if patched is None:
        return []
    return delete_stale_gang_pods(
        api,
        ns,
        Owner(labels.get(LABEL_MODELSET, ""), ns, ""),
        labels.get(LABEL_WORKLOAD, ""),
        patched,
    )
