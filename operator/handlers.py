"""kopf handlers: thin adapters from kopf's arguments to statmux.operator.reconcile.

Importing this module registers the handlers with kopf's default registry;
statmux.operator.main imports it and runs the operator.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import kopf

from statmux.contract import LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER
from statmux.operator import gang, metrics
from statmux.operator import reconcile as rc
from statmux.operator.config import OperatorConfig
from statmux.operator.crd import GROUP, PLURAL, VERSION
from statmux.operator.kube import KubeApi
from statmux.operator.resources import Owner

# Read at import: kopf takes the timer interval when the decorator runs.
CONFIG = OperatorConfig.from_env()
ANNOTATION_PREFIX = "statmux.io"
log = logging.getLogger("statmux.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the CRD's status schema is ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    memo["api"] = KubeApi()
    memo["cfg"] = CONFIG


def _owner(name: str, namespace: str | None, meta: Any) -> Owner:
    # ModelSets are namespaced, so kopf always passes a namespace.
    return Owner(name=name, namespace=namespace or "default", uid=str(meta["uid"]))


def _plain(value: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(value or {}))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_modelset(
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    body: kopf.Body,
    **_: Any,
) -> None:
    started = time.perf_counter()
    result = rc.reconcile(
        memo["api"],
        memo["cfg"],
        _owner(name, namespace, meta),
        int(meta.get("generation") or 0),
        _plain(spec),
        _plain(status),
    )
    patch.status.update(result.status)
    metrics.observe_reconcile(time.perf_counter() - started, "invalid" if result.error else "ok")
    if result.error:
        # A user mistake: report it in status and as an event, do not retry.
        kopf.warn(body, reason="InvalidSpec", message=result.error)
        raise kopf.PermanentError(result.error)
    message = next(
        (c["message"] for c in result.status["conditions"] if c["type"] == "PlanReady"), ""
    )
    kopf.info(body, reason="Planned", message=message)
    log.info("%s/%s: %s", namespace, name, message)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.resync_seconds, initial_delay=1.0)
def resync_modelset(
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: Any,
    body: kopf.Body,
    **_: Any,
) -> None:
    result = rc.resync(
        memo["api"],
        memo["cfg"],
        _owner(name, namespace, meta),
        int(meta.get("generation") or 0),
        _plain(spec),
        _plain(status),
    )
    if result is None:
        return
    if _changed(status, result.status):
        patch.status.update(result.status)
    for workload in result.gang_restarts:
        # a restart the back-off had postponed: no pod event triggered it, this timer did
        metrics.GANG_RESTARTS.inc()
        message = f"group {workload} failed again; its restart back-off ended: recreating it"
        kopf.info(body, reason="GangRestart", message=message)
        log.info("%s/%s: %s", namespace, name, message)


def _changed(old: Any, new: dict[str, Any]) -> bool:
    return any(dict(old or {}).get(k) != v for k, v in new.items())


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "group"})
def gang_restart(event: kopf.RawEvent, memo: Any, body: kopf.Body, **_: Any) -> None:
    def deferred(message: str) -> None:
        kopf.info(body, reason="GangRestartDeferred", message=message)

    deleted = gang.handle_pod_event(
        memo["api"], str(event.get("type")), dict(event["object"]), memo["cfg"], on_defer=deferred
    )
    if deleted:
        metrics.GANG_RESTARTS.inc()
        message = f"a member of its group broke; recreating the group: deleted {', '.join(deleted)}"
        kopf.info(body, reason="GangRestart", message=message)
        log.info("%s", message)
