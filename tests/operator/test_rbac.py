"""operator/rbac.py covers every API call the reconciler makes (and nothing is mis-scoped)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from statmux.operator import gang, rbac
from statmux.operator import reconcile as rc
from statmux.operator.config import OperatorConfig
from statmux.operator.resources import Owner

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _exercise(api: Any, cfg: OperatorConfig, helpers: Any) -> None:
    owner = Owner("demo", "ns", "u")
    spec = helpers.manual_spec([(2, 8, ["a"]), (1, 1, ["b"])], gpus=32)
    st = rc.reconcile(api, cfg, owner, 1, spec, None, planner=helpers.table_planner, now=T0).status
    spec2 = helpers.manual_spec([(2, 8, ["a", "b"])], gpus=32)
    st = rc.reconcile(api, cfg, owner, 2, spec2, st, planner=helpers.table_planner, now=T0).status
    st = rc.resync(api, cfg, owner, 2, spec2, st, now=T0 + timedelta(hours=1)).status
    api.mark_ready("StatefulSet")
    api.mark_ready("LeaderWorkerSet")
    st = rc.resync(api, cfg, owner, 2, spec2, st, now=T0 + timedelta(hours=2)).status
    later = T0 + timedelta(hours=3)
    for sts in api.by_kind("StatefulSet"):
        pods = api.add_pods(sts)
        gang.handle_pod_event(api, "DELETED", pods[0], cfg, later)  # at once
        pods = api.add_pods(sts)
        gang.handle_pod_event(api, "DELETED", pods[0], cfg, later)  # backs off
    # the timer restarts the groups that back off, later resets their counts
    st = rc.resync(api, cfg, owner, 2, spec2, st, now=later + timedelta(minutes=1)).status
    api.mark_ready("StatefulSet")
    for minutes in (2, 30):
        rc.resync(api, cfg, owner, 2, spec2, st, now=later + timedelta(minutes=minutes))


def test_every_call_is_allowed(helpers: Any) -> None:
    cfg = OperatorConfig(rollout_timeout_seconds=10)
    calls = set()
    for served, c in (
        ((), cfg),
        ((), replace(cfg, gang="volcano")),
        (("LeaderWorkerSet",), cfg),
    ):
        api = helpers.FakeApi(served=served + (("PodGroup",) if c.gang == "volcano" else ()))
        _exercise(api, c, helpers)
        calls |= set(api.calls)
    assert {k.kind for _, k in calls} >= {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "Pod",
        "LeaderWorkerSet",
        "PodGroup",
    }
    for verb, kind in sorted(calls, key=str):
        assert rbac.allowed(kind.group, kind.plural, verb), f"RBAC lacks {verb} {kind.plural}"


def test_rules_are_least_privilege_shaped() -> None:
    for r in rbac.RULES:
        assert "*" not in r.verbs and "*" not in r.resources and r.why
    assert not rbac.allowed("statmux.io", "modelsets", "delete")
    assert not rbac.allowed("statmux.io", "modelsets", "update")
    assert not rbac.allowed("", "secrets", "get")
    cluster = rbac.rules(cluster_scoped=True)
    assert {res for r in cluster for res in r["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    core = rbac.rules(include_optional=False)
    assert not any("leaderworkersets" in r["resources"] for r in core)
