"""The reconciler against an in-memory API: idempotence, crash recovery, rollout, gang
restarts, invalid specs."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statmux.contract import ANNOTATION_GANG_EPOCH, LABEL_PLAN_HASH, PLAN_KEY
from statmux.operator import gang
from statmux.operator import reconcile as rc
from statmux.operator.config import OperatorConfig
from statmux.operator.kinds import STATEFULSET
from statmux.operator.resources import Owner
from statmux.placement.plan import plan_hash
from statmux.placement.spec import parse_spec

CFG = OperatorConfig(runtime_image="rt:1", router_image="router:1", rollout_timeout_seconds=60)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(
    api: Any, owner: Owner, spec: dict, status: dict | None, helpers: Any, gen: int = 1, **kw: Any
):
    return rc.reconcile(
        api, kw.pop("cfg", CFG), owner, gen, spec, status, planner=helpers.table_planner, **kw
    )


def cond(status: dict, type_: str) -> str | None:
    return next((c["status"] for c in status["conditions"] if c["type"] == type_), None)


def essence(api: Any) -> dict:
    """Objects without server-assigned fields, to compare end states."""
    out = {}
    for key, obj in api.objects.items():
        o = copy.deepcopy(obj)
        o["metadata"].pop("uid", None)
        o["metadata"].pop("generation", None)
        o["metadata"].pop("resourceVersion", None)
        out[key] = o
    return out


def test_create_then_ready(api: Any, owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])])
    res = run(api, owner, spec, None, helpers, now=T0)
    assert res.error is None
    st = res.status
    assert st["groupCount"] == 2 and st["gpus"] == 5 and st["observedGeneration"] == 1
    assert [g["models"] for g in st["groups"]] == [["a"], ["b"]]
    assert st["predictedAttainment"] == 0.9 and st["workloadKind"] == "StatefulSet"
    assert cond(st, "PlanReady") == "True" and cond(st, "GroupsReady") == "False"
    assert len(api.by_kind("StatefulSet")) == 2
    api.mark_ready("StatefulSet")
    api.mark_ready("Deployment")
    st2 = rc.resync(api, CFG, owner, 1, spec, st, now=T0).status
    assert cond(st2, "GroupsReady") == "True" and cond(st2, "Ready") == "True"
    assert cond(st2, "Degraded") == "False" and st2["readyGroups"] == 2
    assert all(g["ready"] for g in st2["groups"])


def test_rerun_creates_no_duplicates_and_does_not_replan(
    api: Any, owner: Owner, helpers: Any
) -> None:
    calls = []

    def counting(*a: Any) -> dict:
        calls.append(a)
        return helpers.table_planner(*a)

    spec = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])])
    first = rc.reconcile(api, CFG, owner, 1, spec, None, planner=counting, now=T0)
    before = essence(api)
    again = rc.reconcile(api, CFG, owner, 1, spec, first.status, planner=counting, now=T0)
    assert essence(api) == before
    assert len(calls) == 1  # the stored plan answers the same spec
    assert again.status["planHash"] == first.status["planHash"]


def test_crash_at_any_write_then_rerun_converges(owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(2, 8, ["a"]), (1, 2, ["b"]), (1, 1, ["c"])], gpus=32)
    clean = helpers.FakeApi()
    run(clean, owner, spec, None, helpers, now=T0)
    want = essence(clean)
    for n in range(clean.writes):
        api = helpers.FakeApi()
        api.fail_after = n
        with pytest.raises(ConnectionError):
            run(api, owner, spec, None, helpers, now=T0)
        api.fail_after = None
        run(api, owner, spec, None, helpers, now=T0)
        assert essence(api) == want, f"crash after {n} writes"


def test_orphans_are_collected_but_foreign_objects_kept(
    api: Any, owner: Owner, helpers: Any
) -> None:
    spec = helpers.manual_spec([(1, 1, ["a"])])
    run(api, owner, spec, None, helpers)
    labels = {"app.kubernetes.io/managed-by": "statmux", "statmux.io/modelset": owner.name}
    api.objects[("ConfigMap", "ns", "stale")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "stale", "namespace": "ns", "labels": labels},
    }
    api.objects[("ConfigMap", "ns", "users")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "users", "namespace": "ns"},
    }
    other = dict(labels, **{"statmux.io/modelset": "other"})
    api.objects[("ConfigMap", "ns", "other-plan")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "other-plan", "namespace": "ns", "labels": other},
    }
    run(api, owner, spec, None, helpers)
    names = api.names()
    assert ("ConfigMap", "stale") not in names
    assert ("ConfigMap", "users") in names and ("ConfigMap", "other-plan") in names


def test_spec_change_rolls_without_dropping_capacity(api: Any, owner: Owner, helpers: Any) -> None:
    old_spec = helpers.manual_spec([(1, 2, ["a"]), (1, 1, ["b"])])
    st = run(api, owner, old_spec, None, helpers, now=T0).status
    api.mark_ready("StatefulSet")
    api.mark_ready("Deployment")
    old = set(api.by_kind("StatefulSet"))
    new_spec = helpers.manual_spec([(1, 2, ["a"]), (1, 2, ["b"])])
    st = run(api, owner, new_spec, st, helpers, gen=2, now=T0).status
    now_sts = set(api.by_kind("StatefulSet"))
    wanted = {g["workload"] for g in st["groups"]}
    assert len(old & wanted) == 1  # group a unchanged: same workload
    assert old <= now_sts and wanted <= now_sts  # b's old and new workloads side by side
    assert len(now_sts) == 3
    assert st["rollout"]["retiring"] and cond(st, "GroupsReady") == "False"
    # still within the timeout: nothing retires
    st = rc.resync(api, CFG, owner, 2, new_spec, st, now=T0 + timedelta(seconds=30)).status
    assert set(api.by_kind("StatefulSet")) == now_sts
    api.mark_ready("StatefulSet")
    st = rc.resync(api, CFG, owner, 2, new_spec, st, now=T0 + timedelta(seconds=31)).status
    assert len(api.by_kind("StatefulSet")) == 2 and st["rollout"] is None
    assert set(api.by_kind("StatefulSet")) == wanted
    retired = old - wanted
    assert len(retired) == 1
    for name in retired:  # its Service and ConfigMap went with it
        assert ("Service", name) not in api.names() and (
            "ConfigMap",
            f"{name}-plan",
        ) not in api.names()
    assert cond(st, "Ready") == "True"


def test_stuck_rollout_retires_one_old_group_per_timeout(
    api: Any, owner: Owner, helpers: Any
) -> None:
    spec = helpers.manual_spec([(1, 4, ["a"]), (1, 2, ["b"]), (1, 1, ["c"])])
    st = run(api, owner, spec, None, helpers, now=T0).status
    old = set(api.by_kind("StatefulSet"))
    spec2 = helpers.manual_spec([(1, 4, ["a", "b", "c"])])
    st = run(api, owner, spec2, st, helpers, gen=2, now=T0).status
    assert old <= set(api.by_kind("StatefulSet"))
    t = T0 + timedelta(seconds=61)
    st = rc.resync(api, CFG, owner, 2, spec2, st, now=t).status
    gone = old - set(api.by_kind("StatefulSet"))
    assert len(gone) == 1
    # the largest (4 GPUs) retired first
    assert next(iter(gone)).startswith("demo-g0-")
    st = rc.resync(api, CFG, owner, 2, spec2, st, now=t + timedelta(seconds=1)).status
    assert len(old - set(api.by_kind("StatefulSet"))) == 1  # the timeout restarted
    st = rc.resync(api, CFG, owner, 2, spec2, st, now=t + timedelta(seconds=62)).status
    assert len(old - set(api.by_kind("StatefulSet"))) == 2


def test_invalid_spec_is_reported_and_keeps_serving(api: Any, owner: Owner, helpers: Any) -> None:
    good = helpers.manual_spec([(1, 1, ["a"])])
    st = run(api, owner, good, None, helpers).status
    before = essence(api)
    bad = copy.deepcopy(good)
    bad["cluster"]["gpus"] = 0
    res = run(api, owner, bad, st, helpers, gen=2)
    assert res.error and "spec.cluster.gpus" in res.error and "Traceback" not in res.error
    merged = {**st, **res.status}
    assert cond(merged, "PlanReady") == "False" and cond(merged, "Degraded") == "True"
    assert merged["observedGeneration"] == 2
    assert essence(api) == before  # the running groups stay
    assert rc.resync(api, CFG, owner, 2, bad, merged) is None


def test_invalid_cross_field_spec_from_parse_spec(api: Any, owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(1, 1, ["a"])])
    spec["workload"]["perModel"].append({"model": "ghost", "rate": 1})
    res = run(api, owner, spec, None, helpers)
    assert "ghost" in (res.error or "") and not api.objects


def test_resync_waits_for_the_create_handler(api: Any, owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(1, 1, ["a"])])
    assert rc.resync(api, CFG, owner, 1, spec, None) is None
    st = run(api, owner, spec, None, helpers).status
    assert rc.resync(api, CFG, owner, 2, spec, st) is None  # a newer generation is pending
    api.objects.clear()  # someone deleted everything, including the plan
    assert rc.resync(api, CFG, owner, 1, spec, st) is None


def test_resync_heals_deleted_objects(api: Any, owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(1, 1, ["a"])])
    st = run(api, owner, spec, None, helpers).status
    want = api.names()
    sts = next(iter(api.by_kind("StatefulSet")))
    del api.objects[("StatefulSet", "ns", sts)]
    del api.objects[("Service", "ns", f"{owner.name}-router")]
    rc.resync(api, CFG, owner, 1, spec, st)
    assert api.names() == want


def test_leaderworkerset_when_served(owner: Owner, helpers: Any) -> None:
    api = helpers.FakeApi(served=("LeaderWorkerSet",))
    st = run(api, owner, helpers.manual_spec([(2, 8, ["a"])], gpus=16), None, helpers).status
    assert st["workloadKind"] == "LeaderWorkerSet"
    assert len(api.by_kind("LeaderWorkerSet")) == 1 and not api.by_kind("StatefulSet")
    forced = run(
        helpers.FakeApi(served=("LeaderWorkerSet",)),
        owner,
        helpers.manual_spec([(1, 1, ["a"])]),
        None,
        helpers,
        cfg=replace(CFG, workload="statefulset"),
    ).status
    assert forced["workloadKind"] == "StatefulSet"


# --------------------------------------------------------------------------- gang restarts
def _group(api: Any, owner: Owner, helpers: Any) -> tuple[str, list[dict]]:
    run(api, owner, helpers.manual_spec([(4, 4, ["a"])]), None, helpers)
    sts = next(iter(api.by_kind("StatefulSet")))
    return sts, api.add_pods(sts)


def test_deleted_member_recreates_the_whole_group(api: Any, owner: Owner, helpers: Any) -> None:
    sts, pods = _group(api, owner, helpers)
    assert len(pods) == 2
    victim = api.objects.pop(("Pod", "ns", pods[0]["metadata"]["name"]))
    deleted = gang.handle_pod_event(api, "DELETED", victim)
    assert deleted == [pods[1]["metadata"]["name"]]
    assert not api.by_kind("Pod")
    assert gang.gang_epoch(api.objects[("StatefulSet", "ns", sts)]) == 1
    # the deletions we caused come back as events of the old epoch: no new restart
    assert gang.handle_pod_event(api, "DELETED", pods[1]) == []
    fresh = api.add_pods(sts)
    assert all(gang.gang_epoch(p) == 1 for p in fresh)
    assert gang.handle_pod_event(api, "MODIFIED", fresh[0]) == []  # healthy pod: nothing


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Failed"},
        {"phase": "Running", "containerStatuses": [{"name": "runtime", "restartCount": 1}]},
    ],
)
def test_failed_member_recreates_the_group(
    api: Any, owner: Owner, helpers: Any, status: dict
) -> None:
    _sts, pods = _group(api, owner, helpers)
    bad = dict(pods[1], status=status)
    deleted = gang.handle_pod_event(api, "MODIFIED", bad)
    assert sorted(deleted) == sorted(p["metadata"]["name"] for p in pods)


def test_pods_of_a_removed_group_are_ignored(api: Any, owner: Owner, helpers: Any) -> None:
    sts, pods = _group(api, owner, helpers)
    del api.objects[("StatefulSet", "ns", sts)]
    assert gang.handle_pod_event(api, "DELETED", pods[0]) == []
    assert len(api.by_kind("Pod")) == 2


def test_resync_finishes_an_interrupted_gang_restart(api: Any, owner: Owner, helpers: Any) -> None:
    spec = helpers.manual_spec([(4, 4, ["a"])])
    st = run(api, owner, spec, None, helpers).status
    sts = next(iter(api.by_kind("StatefulSet")))
    api.add_pods(sts)
    # crash right after the epoch bump, before deleting the pods
    api.merge_patch(
        STATEFULSET,
        "ns",
        sts,
        {"spec": {"template": {"metadata": {"annotations": {ANNOTATION_GANG_EPOCH: "1"}}}}},
    )
    rc.resync(api, CFG, owner, 1, spec, st)
    assert not api.by_kind("Pod")
    # pods of a newer epoch than a (stale) snapshot of the StatefulSet are kept
    fresh = api.add_pods(sts)
    old_view = copy.deepcopy(api.objects[("StatefulSet", "ns", sts)])
    old_view["spec"]["template"]["metadata"]["annotations"] = {}
    assert gang.delete_stale_gang_pods(api, "ns", owner, sts, old_view) == []
    assert len(api.by_kind("Pod")) == len(fresh)
    # the epoch survives the next apply of the StatefulSet
    assert gang.gang_epoch(api.objects[("StatefulSet", "ns", sts)]) == 1


def test_one_plan_hash_from_planner_to_objects_and_back(
    api: Any, owner: Owner, helpers: Any
) -> None:
    spec = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])])
    st = run(api, owner, spec, None, helpers, now=T0).status
    plan, digest = rc.current_plan(api, owner)
    assert plan is not None and digest == rc.spec_hash(spec)
    want = helpers.table_planner(owner.name, owner.namespace, parse_spec(spec))
    assert plan == want  # the ConfigMap round trip loses nothing
    assert st["planHash"] == plan.plan_hash == plan_hash(plan.groups)
    for obj in api.objects.values():
        labels = obj["metadata"].get("labels") or {}
        if LABEL_PLAN_HASH in labels:
            assert labels[LABEL_PLAN_HASH] == plan.plan_hash, obj["metadata"]["name"]


def test_a_stored_plan_that_does_not_parse_is_planned_again(
    api: Any, owner: Owner, helpers: Any
) -> None:
    calls = []

    def counting(*a: Any) -> Any:
        calls.append(a)
        return helpers.table_planner(*a)

    spec = helpers.manual_spec([(1, 1, ["a"])])
    first = rc.reconcile(api, CFG, owner, 1, spec, None, planner=counting, now=T0)
    cm = api.objects[("ConfigMap", owner.namespace, f"{owner.name}-plan")]
    stored = json.loads(cm["data"][PLAN_KEY])
    stored["groups"][0]["pp"] = 0  # edited by hand into an invalid Plan
    cm["data"][PLAN_KEY] = json.dumps(stored)
    assert rc.current_plan(api, owner) == (None, None)
    again = rc.reconcile(api, CFG, owner, 1, spec, first.status, planner=counting, now=T0)
    assert len(calls) == 2 and again.error is None
    assert again.status["planHash"] == first.status["planHash"]
    assert rc.current_plan(api, owner)[0] is not None  # the repaired plan is stored


def test_a_replan_is_given_the_plan_in_use(api: Any, owner: Owner, helpers: Any) -> None:
    """A spec change re-plans with the stored plan as the incumbent (so more GPUs, memory or
    a looser SLO never lower the deployed plan's predicted attainment); a first plan and a
    stored plan that does not parse have none."""
    given: list[Any] = []

    def recording(name: str, namespace: str, spec: Any, previous: Any = None) -> Any:
        given.append(previous)
        return helpers.table_planner(name, namespace, spec, previous)

    spec = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])])
    first = rc.reconcile(api, CFG, owner, 1, spec, None, planner=recording, now=T0)
    deployed, _ = rc.current_plan(api, owner)
    grown = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])], gpus=24)
    second = rc.reconcile(api, CFG, owner, 2, grown, first.status, planner=recording, now=T0)
    assert second.error is None
    assert given[0] is None and given[1] == deployed and deployed is not None
    cm = api.objects[("ConfigMap", owner.namespace, f"{owner.name}-plan")]
    cm["data"][PLAN_KEY] = "{}"  # unusable: planned again from scratch
    spec3 = helpers.manual_spec([(2, 2, ["a"]), (1, 1, ["b"])], gpus=32)
    rc.reconcile(api, CFG, owner, 3, spec3, second.status, planner=recording, now=T0)
    assert given[2] is None
