"""The operator end to end on the local control plane (e2e/cluster): the chart's RBAC and CRD,
the operator as a local process with the chart's ServiceAccount token, kwok's fake GPU nodes,
the real scheduler and garbage collector.

The tests in this module share one operator and one namespace; each test uses its own
ModelSet, so they do not depend on each other's state.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_harness import (
    RELEASE_NAMESPACE,
    Kubectl,
    OperatorProcess,
    helm,
    wait_until,
)
from k8s_tools import CHART, kube_version

pytestmark = pytest.mark.e2e

GPU = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"  # what e2e/cluster/up.sh labels its fake nodes with
OWNED_KINDS = ("configmaps", "services", "statefulsets", "deployments")
# Generous: kwok and the controllers share 2 cores with the operator and the tests.
CONVERGE_S = 240


# --------------------------------------------------------------------------- ModelSets
def manual_modelset(name: str) -> dict[str, Any]:
    """Deterministic layout: g0 = pp2 x tp2 over 2 nodes of 2 GPUs (2 pods x 2 GPUs),
    g1 = pp1 x tp2 (1 pod x 2 GPUs). Planning is a short simulation (< 1 s)."""
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {"name": "bert-a", "profile": {"builtin": "bert-2.6b"}},
                {"name": "bert-b", "profile": {"builtin": "bert-2.6b"}},
                {"name": "bert-c", "profile": {"builtin": "bert-1.3b"}},
            ],
            "slo": {"sloScale": 5},
            "workload": {
                "durationSeconds": 60,
                "seed": 1,
                "perModel": [
                    {"model": "bert-a", "rate": 4, "cv": 2},
                    {"model": "bert-b", "rate": 2, "cv": 2},
                    {"model": "bert-c", "rate": 1, "cv": 2},
                ],
            },
            "cluster": {
                "gpus": 8,
                "gpuMemory": "13Gi",
                "gpusPerNode": 2,
                "gpuProduct": GPU_PRODUCT,
            },
            "placement": {
                "policy": "manual",
                "groups": [
                    {"pipelineStages": 2, "tensorParallel": 2, "models": ["bert-a", "bert-b"]},
                    {"pipelineStages": 1, "tensorParallel": 2, "models": ["bert-c"]},
                ],
            },
        },
    }


def searched_modelset(name: str, rate: float = 6.0) -> dict[str, Any]:
    """The statmux policy (simulator-guided search) on a small case."""
    ms = manual_modelset(name)
    ms["spec"]["placement"] = {"policy": "statmux"}
    ms["spec"]["workload"] = {
        "durationSeconds": 60,
        "seed": 2,
        "total": {"rate": rate, "cv": 3, "split": "powerLaw", "exponent": 0.5},
    }
    # 4 GPUs: a few re-plans in a row keep old and new groups side by side (the rollout
    # retires old groups once the new ones are ready), and all of them must fit on 32 GPUs.
    ms["spec"]["cluster"].update(gpus=4, gpusPerNode=4)
    return ms


# --------------------------------------------------------------------------- observations
def modelset(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    obj = kubectl.get("modelset", name, ns)
    assert obj is not None, f"ModelSet {ns}/{name} is gone"
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    """Ready=True for the current generation, no old groups retiring."""
    st = obj.get("status") or {}
    ready = condition(obj, "Ready")
    return (
        ready is not None
        and ready["status"] == "True"
        and st.get("observedGeneration") == obj["metadata"]["generation"]
        and not (st.get("rollout") or {}).get("retiring")
    )


def wait_ready(kubectl: Kubectl, ns: str, name: str, operator: OperatorProcess) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        if not operator.alive:
            raise AssertionError(f"the operator died:\n{operator.tail()}")
        obj = modelset(kubectl, ns, name)
        return obj if is_ready(obj) else None

    try:
        return wait_until(probe, CONVERGE_S, f"ModelSet {name} Ready", interval=0.5)
    except AssertionError:
        print(yaml.safe_dump((modelset(kubectl, ns, name)).get("status")))
        print(kubectl("get", "statefulsets,pods", "-n", ns, "-o", "wide", check=False).stdout)
        print(kubectl("get", "nodes", "-o", "wide", check=False).stdout)
        for pod in kubectl.items("pods", ns):
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
            print(pod["metadata"]["name"], pod["status"].get("phase"), conds)
        for sts in kubectl.items("statefulsets", ns):
            print(sts["metadata"]["name"], sts["metadata"].get("generation"), sts.get("status"))
        print(operator.tail(120))
        raise


def owned(kubectl: Kubectl, ns: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Everything labelled for the ModelSet, by (kind, name); excludes objects being deleted."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in kubectl.items(",".join(OWNED_KINDS), ns, f"statmux.io/modelset={name}"):
        if obj["metadata"].get("deletionTimestamp"):
            continue
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in out, f"duplicate {key}"
        out[key] = obj
    return out


def expected_objects(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """What the ModelSet's status says it owns: the plan ConfigMap, per group a StatefulSet,
    a headless Service and the group's plan ConfigMap, and the router Deployment/Service."""
    name = obj["metadata"]["name"]
    out = {("ConfigMap", f"{name}-plan"), ("Deployment", f"{name}-router")}
    out.add(("Service", f"{name}-router"))
    for g in obj["status"]["groups"]:
        w = g["workload"]
        out |= {("StatefulSet", w), ("Service", w), ("ConfigMap", f"{w}-plan")}
    return out


def group_pods(kubectl: Kubectl, ns: str, workload: str) -> list[dict[str, Any]]:
    pods = kubectl.items("pods", ns, f"statmux.io/workload={workload}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def plan_spec_hash(kubectl: Kubectl, ns: str, name: str) -> str | None:
    """The spec hash the plan ConfigMap was planned from (written first on every re-plan)."""
    from statmux.contract import ANNOTATION_SPEC_HASH

    cm = kubectl.get("configmap", f"{name}-plan", ns)
    return ((cm or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)


def assert_owned_by(obj: dict[str, Any], ms: dict[str, Any]) -> None:
    refs = obj["metadata"].get("ownerReferences") or []
    assert any(
        r["kind"] == "ModelSet" and r["uid"] == ms["metadata"]["uid"] and r.get("controller")
        for r in refs
    ), f"{obj['kind']}/{obj['metadata']['name']} is not controlled by the ModelSet: {refs}"


def assert_exactly_the_plan(kubectl: Kubectl, ns: str, ms: dict[str, Any]) -> None:
    """No duplicates, no orphans: the owned objects are exactly those the status names, and
    every group pod belongs to a current group with the right GPU request."""
    name = ms["metadata"]["name"]
    have = owned(kubectl, ns, name)
    want = expected_objects(ms)
    assert set(have) == want, (
        f"orphans: {sorted(set(have) - want)}; missing: {sorted(want - set(have))}"
    )
    for obj in have.values():
        assert_owned_by(obj, ms)
    workloads = {g["workload"]: g for g in ms["status"]["groups"]}
    pods = kubectl.items("pods", ns, f"statmux.io/modelset={name},statmux.io/component=group")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    by_workload: dict[str, int] = {}
    for p in live:
        w = p["metadata"]["labels"]["statmux.io/workload"]
        assert w in workloads, f"pod {p['metadata']['name']} belongs to no current group ({w})"
        by_workload[w] = by_workload.get(w, 0) + 1
    for w, g in workloads.items():
        assert by_workload.get(w, 0) == g["pods"], (w, by_workload, g)


# --------------------------------------------------------------------------- cleanup
@pytest.fixture(autouse=True)
def delete_modelsets_after_each_test(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> Iterator[None]:
    """The fake nodes hold 32 GPUs: free each test's groups before the next one starts."""
    yield
    if not kubectl.items("modelsets", namespace):
        return
    if not operator.alive:
        # kopf's finalizer needs a running operator; without one, let the deletion through.
        for ms in kubectl.items("modelsets", namespace):
            kubectl(
                "patch", "modelset", ms["metadata"]["name"], "-n", namespace,
                "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
            )  # fmt: skip
    kubectl("delete", "modelsets", "--all", "-n", namespace, "--wait=true", "--timeout=120s")
    wait_until(
        lambda: not kubectl.items("pods", namespace, "app.kubernetes.io/managed-by=statmux"),
        CONVERGE_S,
        "the group pods of deleted ModelSets to go",
    )


# --------------------------------------------------------------------------- 1. the chart
def test_chart_installs_crd_account_and_least_privilege_rbac(
    chart: str, kubectl: Kubectl, service_account: str, crd_existed: bool
):
    crd = kubectl.get("crd", "modelsets.statmux.io")
    assert crd is not None
    on_disk = yaml.safe_load((CHART / "crds" / "modelset.yaml").read_text())
    served = crd["spec"]["versions"][0]
    assert served["name"] == on_disk["spec"]["versions"][0]["name"]
    assert served["subresources"] == {"status": {}}
    assert "ms" in crd["spec"]["names"]["shortNames"]
    established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
    assert established and established[0]["status"] == "True"
    assert kubectl.get("serviceaccount", service_account, RELEASE_NAMESPACE) is not None
    (dep,) = kubectl.items("deployment", RELEASE_NAMESPACE, f"app.kubernetes.io/instance={chart}")
    assert dep["spec"]["replicas"] == 0  # the e2e runs the operator itself, as this SA

    who = f"system:serviceaccount:{RELEASE_NAMESPACE}:{service_account}"

    def can(verb: str, resource: str, ns: str | None = "default") -> bool:
        args = ["auth", "can-i", verb, resource, f"--as={who}"]
        args += ["-n", ns] if ns else []
        return kubectl(*args, check=False).stdout.strip() == "yes"

    # What the operator needs, anywhere (cluster-wide mode by default) ...
    assert can("create", "statefulsets.apps")
    assert can("patch", "modelsets.statmux.io/status")
    assert can("delete", "pods")
    assert can("watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    # ... and nothing it does not.
    assert not can("get", "secrets")
    assert not can("create", "pods")
    assert not can("update", "modelsets.statmux.io")
    assert not can("delete", "modelsets.statmux.io")
    assert not can("create", "clusterroles.rbac.authorization.k8s.io", None)
    assert not can("delete", "nodes", None)


def test_operator_runs_as_the_chart_service_account_not_admin(
    operator: OperatorProcess, service_account: str
):
    sa = Kubectl(operator.kubeconfig)
    who = sa("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    assert who == f"system:serviceaccount:{RELEASE_NAMESPACE}:{service_account}"
    denied = sa("get", "secrets", "-n", RELEASE_NAMESPACE, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert operator.healthy()


SERVICE_MONITOR_STUB = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_rendered_manifests_pass_server_side_dry_run(
    chart: str, kubectl: Kubectl, namespace: str, admin_kubeconfig: Path, tmp_path: Path
):
    """Every combination of the chart's switches is accepted by the API server."""
    had_monitors = kubectl.get("crd", SERVICE_MONITOR_STUB["metadata"]["name"]) is not None
    if not had_monitors:  # prometheus-operator is not installed here: a schemaless stand-in
        kubectl.apply(SERVICE_MONITOR_STUB)
        kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    try:
        cases = {
            "default": [],
            "namespaced": [f"watchNamespaces={{{namespace}}}"],
            "monitoring": ["metrics.serviceMonitor.enabled=true", "grafana.dashboard.enabled=true"],
        }
        for case, sets in cases.items():
            args: list[str | Path] = ["template", "statmux", CHART, "-n", RELEASE_NAMESPACE]
            args += ["--include-crds", "--kube-version", kube_version().lstrip("v")]
            for s in sets:
                args += ["--set", s]
            manifests = helm(*args, kubeconfig=admin_kubeconfig)
            kinds = {d["kind"] for d in yaml.safe_load_all(manifests) if d}
            out = kubectl("apply", "--dry-run=server", "-f", "-", input=manifests, check=False)
            assert out.returncode == 0, f"{case}: {out.stderr}"
            assert "(server dry run)" in out.stdout
            if case == "namespaced":
                assert "Role" in kinds and "RoleBinding" in kinds
            if case == "monitoring":
                assert "ServiceMonitor" in kinds
    finally:
        if not had_monitors:
            kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", check=False)


# --------------------------------------------------------------------------- 3. apply
def test_modelset_is_planned_scheduled_and_ready(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
):
    name = "basic"
    kubectl.apply(manual_modelset(name), "-n", namespace)
    ms = wait_ready(kubectl, namespace, name, operator)
    st = ms["status"]

    # The plan in status ...
    assert st["policy"] == "manual"
    assert st["gpus"] == 6 and st["groupCount"] == 2
    assert 0.0 <= st["predictedAttainment"] <= 1.0
    shapes = sorted((g["pp"], g["tp"], tuple(sorted(g["models"]))) for g in st["groups"])
    assert shapes == [(1, 2, ("bert-c",)), (2, 2, ("bert-a", "bert-b"))]
    for t in ("PlanReady", "GroupsReady", "Ready"):
        assert (condition(ms, t) or {}).get("status") == "True", t
    assert (condition(ms, "Degraded") or {}).get("status") == "False"
    # ... and in the ConfigMap, identical.
    cm = kubectl.get("configmap", st["planConfigMap"], namespace)
    assert cm is not None
    plan = json.loads(cm["data"]["plan.json"])
    assert len(plan["groups"]) == 2
    assert {m["name"] for g in plan["groups"] for m in g["models"]} == {
        "bert-a",
        "bert-b",
        "bert-c",
    }

    # Group pods are bound to GPU nodes with the right GPU counts.
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    for g in st["groups"]:
        pods = group_pods(kubectl, namespace, g["workload"])
        assert len(pods) == g["pods"] == g["gpus"] // 2  # gpusPerNode 2
        for p in pods:
            node = nodes[p["spec"]["nodeName"]]
            assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
            assert int(node["status"]["allocatable"][GPU]) >= 2
            (c,) = p["spec"]["containers"]
            assert c["resources"]["requests"][GPU] == "2" == c["resources"]["limits"][GPU]
            assert p["status"]["phase"] == "Running"
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["WORLD_SIZE"] == str(g["gpus"])
            assert env["LWS_GROUP_SIZE"] == str(g["pods"])
        # The headless Service for rendezvous, and the group's plan.
        svc = kubectl.get("service", g["workload"], namespace)
        assert svc is not None and svc["spec"]["clusterIP"] == "None"
    router = kubectl.get("service", f"{name}-router", namespace)
    assert router is not None and router["spec"]["ports"][0]["port"] > 0
    assert_router_names_every_group_service(kubectl, namespace, name, st, cm)
    assert_exactly_the_plan(kubectl, namespace, ms)


def assert_router_names_every_group_service(
    kubectl: Kubectl, ns: str, name: str, st: dict[str, Any], cm: dict[str, Any]
) -> None:
    """The router's configuration (its ConfigMap's groups.json, read by `statmux router
    --groups-file`) sends each group's requests to its leader through the group's Service."""
    deployment = kubectl.get("deployment", f"{name}-router", ns)
    assert deployment is not None
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    command = c["command"]
    assert command[:2] == ["statmux", "router"]
    groups_file = command[command.index("--groups-file") + 1]
    assert groups_file == "/etc/statmux/groups.json"
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    endpoints = json.loads(cm["data"]["groups.json"])
    assert set(endpoints) == {g["name"] for g in st["groups"]}
    for g in st["groups"]:
        workload = g["workload"]
        svc = kubectl.get("service", workload, ns)
        assert svc is not None, workload
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
        host = f"{workload}-0.{workload}.{ns}.svc.cluster.local"
        assert endpoints[g["name"]] == f"http://{host}:{port}"


# --------------------------------------------------------------------------- 4. invalid
INVALID_CASES = {
    # schema: a bound from the pydantic model
    "schema-gpus": (
        lambda ms: ms["spec"]["cluster"].update(gpus=0),
        ["spec.cluster.gpus"],
    ),
    # schema: an enum
    "schema-policy": (
        lambda ms: ms["spec"]["placement"].update(policy="random"),
        ["spec.placement.policy", "random"],
    ),
    # CEL: exactly one workload kind
    "cel-workload": (
        lambda ms: ms["spec"]["workload"].update(total={"rate": 3}),
        ["spec.workload", "perModel, total or trace"],
    ),
    # CEL across fields: manual groups need more GPUs than the cluster has
    "cel-gpus": (
        lambda ms: ms["spec"]["cluster"].update(gpus=4),
        ["cluster.gpus"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_invalid_modelset_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, chart: str, case: str
):
    mutate, expected = INVALID_CASES[case]
    ms = manual_modelset(f"invalid-{case}")
    mutate(ms)
    out = kubectl.apply(ms, "-n", namespace, check=False)
    assert out.returncode != 0, f"{case} was accepted"
    assert "is invalid" in out.stderr, out.stderr
    for text in expected:
        assert text in out.stderr, f"{case}: {text!r} not in {out.stderr!r}"
    assert kubectl.get("modelset", ms["metadata"]["name"], namespace) is None


# --------------------------------------------------------------------------- 5. edit
def test_edit_replans_and_converges(kubectl: Kubectl, operator: OperatorProcess, namespace: str):
    name = "edited"
    ms = manual_modelset(name)
    kubectl.apply(ms, "-n", namespace)
    before = wait_ready(kubectl, namespace, name, operator)

    edited = copy.deepcopy(ms)
    spec = edited["spec"]
    spec["models"].append({"name": "bert-d", "profile": {"builtin": "bert-1.3b"}})
    spec["workload"]["perModel"][0]["rate"] = 8  # bert-a: 4 -> 8 req/s
    spec["workload"]["perModel"].append({"model": "bert-d", "rate": 1, "cv": 2})
    spec["placement"]["groups"][1]["models"].append("bert-d")
    kubectl.apply(edited, "-n", namespace)

    after = wait_ready(kubectl, namespace, name, operator)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
    assert after["status"]["planHash"] != before["status"]["planHash"]
    models = {m for g in after["status"]["groups"] for m in g["models"]}
    assert models == {"bert-a", "bert-b", "bert-c", "bert-d"}
    cm = kubectl.get("configmap", f"{name}-plan", namespace)
    assert cm is not None
    plan = json.loads(cm["data"]["plan.json"])
    assert "bert-d" in {m["name"] for g in plan["groups"] for m in g["models"]}
    # The old groups are gone once the new ones are ready; nothing else is left behind.
    assert_exactly_the_plan(kubectl, namespace, after)


# --------------------------------------------------------------------------- 6. gang
def test_deleting_a_group_pod_recreates_the_whole_group(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
):
    name = "gang"
    kubectl.apply(manual_modelset(name), "-n", namespace)
    ms = wait_ready(kubectl, namespace, name, operator)
    (group,) = [g for g in ms["status"]["groups"] if g["pods"] > 1]
    pods = group_pods(kubectl, namespace, group["workload"])
    assert len(pods) == group["pods"] == 2
    old_uids = {p["metadata"]["uid"] for p in pods}
    others = {
        p["metadata"]["uid"]
        for g in ms["status"]["groups"]
        if g is not group
        for p in group_pods(kubectl, namespace, g["workload"])
    }

    victim = sorted(p["metadata"]["name"] for p in pods)[-1]  # a worker, not the leader
    kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")

    def recreated() -> bool:
        now = group_pods(kubectl, namespace, group["workload"])
        uids = {p["metadata"]["uid"] for p in now}
        running = all(p["status"].get("phase") == "Running" for p in now)
        return len(now) == group["pods"] and not (uids & old_uids) and running

    wait_until(recreated, CONVERGE_S, "every pod of the group to be recreated")
    # The other group was not touched.
    after = {
        p["metadata"]["uid"]
        for g in ms["status"]["groups"]
        if g is not group
        for p in group_pods(kubectl, namespace, g["workload"])
    }
    assert after == others
    assert_exactly_the_plan(kubectl, namespace, wait_ready(kubectl, namespace, name, operator))


def test_a_second_gang_restart_backs_off_and_the_timer_carries_it_out(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
):
    """The first gang restart is immediate; the next one in a row waits the back-off (10 s,
    the operator's default) and then happens with no pod event to trigger it: the pod the
    StatefulSet controller puts back is healthy (kwok), so only the resync timer can."""
    from statmux.contract import (
        ANNOTATION_GANG_FAILED_AT,
        ANNOTATION_GANG_PENDING,
        ANNOTATION_GANG_RESTARTS,
    )
    from statmux.operator.gang import gang_epoch
    from statmux.operator.status import parse_iso

    name = "backoff"
    kubectl.apply(manual_modelset(name), "-n", namespace)
    ms = wait_ready(kubectl, namespace, name, operator)
    (group,) = [g for g in ms["status"]["groups"] if g["pods"] > 1]
    workload = group["workload"]

    def sts() -> dict[str, Any]:
        obj = kubectl.get("statefulset", workload, namespace)
        assert obj is not None
        return obj

    def annotations() -> dict[str, str]:
        return sts()["metadata"].get("annotations") or {}

    def delete_a_worker() -> set[str]:
        pods = group_pods(kubectl, namespace, workload)
        victim = sorted(p["metadata"]["name"] for p in pods)[-1]
        kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
        return {p["metadata"]["uid"] for p in pods}

    def recreated(old: set[str], epoch: int) -> bool:
        now = group_pods(kubectl, namespace, workload)
        return (
            len(now) == group["pods"]
            and not ({p["metadata"]["uid"] for p in now} & old)
            and all(gang_epoch(p) == epoch for p in now)
        )

    old = delete_a_worker()
    wait_until(lambda: recreated(old, 1), CONVERGE_S, "the group recreated at once (epoch 1)")
    assert annotations().get(ANNOTATION_GANG_RESTARTS) == "1"
    wait_ready(kubectl, namespace, name, operator)

    old = delete_a_worker()

    # the second failure in a row is recorded and waits: same epoch, a due time
    def deferred() -> dict[str, Any] | None:
        obj = sts()  # one snapshot: the pending failure and the epoch it is for
        notes = obj["metadata"].get("annotations") or {}
        return obj if ANNOTATION_GANG_PENDING in notes else None

    pending = wait_until(deferred, CONVERGE_S, "the second restart to be deferred", interval=0.2)
    assert gang_epoch(pending) == 1
    notes = pending["metadata"]["annotations"]
    assert "a member pod was deleted" in notes[ANNOTATION_GANG_PENDING]
    failed_at = parse_iso(notes[ANNOTATION_GANG_FAILED_AT])
    assert failed_at is not None
    wait_until(lambda: recreated(old, 2), CONVERGE_S, "the group recreated after the back-off")
    after = annotations()
    assert after.get(ANNOTATION_GANG_RESTARTS) == "2"
    # The restart consumed the deferred failure (one patch clears it with the epoch bump).
    # A failure of the new epoch seen after it would be recorded afresh, for its own restart:
    # once, on a CI machine, one was (pod -0); the operator's log then says which event.
    later = after.get(ANNOTATION_GANG_PENDING)
    assert (
        later is None or after.get(ANNOTATION_GANG_FAILED_AT) != notes[ANNOTATION_GANG_FAILED_AT]
    ), f"the deferred failure is still pending after the restart:\n{operator.tail(80)}"
    if later is not None:
        print(f"a failure after the restart: {later}\n{operator.tail(80)}")
    # the resync timer did it (its event on the ModelSet), not before the back-off ended
    events = [
        e
        for e in kubectl.items("events", namespace)
        if e["involvedObject"].get("name") == name and e.get("reason") == "GangRestart"
    ]
    assert len(events) == 1, events
    assert "back-off ended" in events[0]["message"]
    stamp = events[0].get("lastTimestamp") or events[0].get("eventTime")
    restarted_at = parse_iso(str(stamp)[:19] + "Z")
    assert restarted_at is not None
    assert (restarted_at - failed_at).total_seconds() >= 10
    assert_exactly_the_plan(kubectl, namespace, wait_ready(kubectl, namespace, name, operator))


# --------------------------------------------------------------------------- 7. crashes
def test_operator_killed_mid_reconcile_leaves_no_duplicates_or_orphans(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
):
    name = "crashy"
    rng = random.Random(7)
    rate = 6.0
    kubectl.apply(searched_modelset(name, rate), "-n", namespace)
    wait_ready(kubectl, namespace, name, operator)
    kills = []
    for i in range(4):
        # Each round changes the spec (a re-plan: new groups next to the old ones) and kills
        # the operator with SIGKILL at a random point of that reconcile: during planning
        # (even rounds), or while it applies the new plan's objects (odd rounds).
        before = plan_spec_hash(kubectl, namespace, name)
        rate += 3.0
        kubectl.apply(searched_modelset(name, rate), "-n", namespace)
        if i % 2 == 0:
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            wait_until(
                lambda b=before: plan_spec_hash(kubectl, namespace, name) != b,
                CONVERGE_S,
                "the new plan to be written",
                interval=0.05,
            )
            time.sleep(rng.uniform(0.0, 0.3))
        kills.append(len(owned(kubectl, namespace, name)))
        operator.kill()
        operator.start()
        operator.wait_healthy()
    print(f"owned objects at each kill: {kills}")
    # ... then let it finish: the survivor converges to exactly the final plan.
    ms = wait_ready(kubectl, namespace, name, operator)
    assert ms["status"]["observedGeneration"] == ms["metadata"]["generation"]
    assert_exactly_the_plan(kubectl, namespace, ms)
    # Stable: another pass changes nothing.
    time.sleep(3)
    again = modelset(kubectl, namespace, name)
    assert again["status"]["planHash"] == ms["status"]["planHash"]
    assert_exactly_the_plan(kubectl, namespace, again)


# --------------------------------------------------------------------------- 8. delete
def test_deleting_the_modelset_removes_everything(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
):
    name = "doomed"
    kubectl.apply(manual_modelset(name), "-n", namespace)
    ms = wait_ready(kubectl, namespace, name, operator)
    assert owned(kubectl, namespace, name)
    kubectl("delete", "modelset", name, "-n", namespace, "--wait=true", "--timeout=120s")

    def all_gone() -> bool:
        left = kubectl.items(
            ",".join((*OWNED_KINDS, "pods")), namespace, f"statmux.io/modelset={name}"
        )
        return not left

    wait_until(all_gone, CONVERGE_S, f"every object of ModelSet {name} to be deleted")
    assert kubectl.get("modelset", name, namespace) is None
    # Nothing else in the namespace still points at the deleted ModelSet.
    for obj in kubectl.items(",".join((*OWNED_KINDS, "pods")), namespace):
        refs = obj["metadata"].get("ownerReferences") or []
        assert all(r.get("uid") != ms["metadata"]["uid"] for r in refs), obj["metadata"]["name"]


# --------------------------------------------------------------------------- chart lifecycle
def test_helm_keeps_the_crd_and_modelsets_on_upgrade_and_uninstall(
    kubectl: Kubectl, chart: str, admin_kubeconfig: Path, namespace: str, operator: OperatorProcess
):
    """Runs last: uninstalls the release (the CRD and the ModelSets must survive)."""
    name = "survivor"
    kubectl.apply(manual_modelset(name), "-n", namespace)
    wait_ready(kubectl, namespace, name, operator)
    uid = modelset(kubectl, namespace, name)["metadata"]["uid"]
    helm(
        "upgrade",
        chart,
        CHART,
        "-n",
        RELEASE_NAMESPACE,
        "--reuse-values",
        "--wait",
        kubeconfig=admin_kubeconfig,
    )
    assert modelset(kubectl, namespace, name)["metadata"]["uid"] == uid
    operator.stop()
    helm("uninstall", chart, "-n", RELEASE_NAMESPACE, "--wait", kubeconfig=admin_kubeconfig)
    assert kubectl.get("crd", "modelsets.statmux.io") is not None
    assert modelset(kubectl, namespace, name)["metadata"]["uid"] == uid
    assert not kubectl.items(
        "serviceaccounts", RELEASE_NAMESPACE, f"app.kubernetes.io/instance={chart}"
    )
