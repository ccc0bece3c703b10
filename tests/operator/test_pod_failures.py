"""Why a group's pod fails, as the ModelSet's Degraded condition says it (pure logic), and the
reconciler reporting a crash-looping group by name."""

from __future__ import annotations

from typing import Any

from statmux.contract import ANNOTATION_LAST_FAILURE
from statmux.operator import gang
from statmux.operator import reconcile as rc
from statmux.operator.config import OperatorConfig
from statmux.operator.pod_failures import container_failure, pod_failure
from statmux.operator.resources import Owner

CFG = OperatorConfig(runtime_image="rt:1", router_image="router:1", rollout_timeout_seconds=60)


def pod(name: str, *statuses: dict, phase: str = "Running", **extra: Any) -> dict:
    return {
        "metadata": {"name": name},
        "status": {"phase": phase, "containerStatuses": list(statuses), **extra},
    }


CRASHLOOP = {
    "name": "runtime",
    "restartCount": 3,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "x" * 500 + "END"}},
}


def test_crashloop_names_the_container_reason_and_last_exit() -> None:
    why = pod_failure(pod("g0-0", CRASHLOOP))
    assert why is not None
    assert why.startswith("pod g0-0 container runtime: CrashLoopBackOff (last exit 2: Error: ...")
    assert why.endswith("END)") and len(why) < 300  # the message's end, bounded


def test_starting_and_running_containers_are_not_failures() -> None:
    creating = {"name": "runtime", "state": {"waiting": {"reason": "ContainerCreating"}}}
    running = {"name": "runtime", "state": {"running": {}}, "restartCount": 0}
    assert container_failure(creating) is None
    assert container_failure(running) is None
    assert pod_failure(pod("p", creating, running)) is None
    assert pod_failure({"metadata": {"name": "p"}, "status": {"phase": "Pending"}}) is None


def test_other_failures() -> None:
    waiting = {"reason": "ImagePullBackOff", "message": "nope"}
    pull = {"name": "runtime", "state": {"waiting": waiting}}
    assert pod_failure(pod("p", pull)) == "pod p container runtime: ImagePullBackOff (nope)"
    oom = {"name": "runtime", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    assert pod_failure(pod("p", oom)) == "pod p container runtime: exit 137: OOMKilled"
    evicted = pod("p", phase="Failed", reason="Evicted", message="low on memory")
    assert pod_failure(evicted) == "pod p failed: Evicted (low on memory)"
    init = {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [CRASHLOOP]}}
    assert "CrashLoopBackOff" in (pod_failure(init) or "")


def _cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_crash_looping_group_makes_the_modelset_degraded_naming_it(
    api: Any, owner: Owner, helpers: Any
) -> None:
    spec = helpers.manual_spec([(2, 1, ["a"]), (1, 1, ["b"])])
    st = rc.reconcile(api, CFG, owner, 1, spec, None, planner=helpers.table_planner).status
    assert _cond(st, "Degraded")["status"] == "False"
    stss = sorted(api.by_kind("StatefulSet"))
    pods = api.add_pods(stss[0])
    api.add_pods(stss[1])
    group = api.objects[("StatefulSet", "ns", stss[0])]["spec"]["template"]["metadata"]["labels"]
    name = group["statmux.io/group"]
    # a starting group is not degraded
    st = rc.resync(api, CFG, owner, 1, spec, st).status
    assert _cond(st, "Degraded")["status"] == "False"
    api.objects[("Pod", "ns", pods[-1]["metadata"]["name"])]["status"]["containerStatuses"] = [
        CRASHLOOP
    ]
    st = rc.resync(api, CFG, owner, 1, spec, st).status
    degraded = _cond(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "GroupFailing"
    victim = pods[-1]["metadata"]["name"]
    assert f"group {name}: pod {victim} container runtime" in degraded["message"]
    assert "CrashLoopBackOff (last exit 2: Error" in degraded["message"]
    assert _cond(st, "Ready")["status"] == "False"

    # the gang restart deletes the failed pod; its reason stays on the StatefulSet
    bad = api.objects[("Pod", "ns", pods[-1]["metadata"]["name"])]
    gang.handle_pod_event(api, "MODIFIED", bad)
    assert not [p for p in api.by_kind("Pod") if p.startswith(stss[0])]
    note = api.objects[("StatefulSet", "ns", stss[0])]["metadata"]["annotations"]
    assert (
        "CrashLoopBackOff" in note[ANNOTATION_LAST_FAILURE]
        and "(gang restart 1; 1 in a row)" in note[ANNOTATION_LAST_FAILURE]
    )
    st = rc.resync(api, CFG, owner, 1, spec, st).status
    degraded = _cond(st, "Degraded")
    assert degraded["status"] == "True"
    assert f"group {name}: restarting after pod " in degraded["message"]

    # once every group is ready the condition clears
    api.mark_ready("StatefulSet")
    api.mark_ready("Deployment")
    st = rc.resync(api, CFG, owner, 1, spec, st).status
    assert _cond(st, "Degraded")["status"] == "False"
    assert _cond(st, "Ready")["status"] == "True"
