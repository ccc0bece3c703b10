"""Manifest builders: names, labels, owner references, GPU counts, env, gang hooks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from plans import make_test_plan  # tests/helpers (on the path via conftest.py)

from statmux.contract import (
    GROUPS_KEY,
    GROUPS_PATH,
    LABEL_GROUP_HASH,
    LABEL_MANAGED_BY,
    LABEL_MODELSET,
    LABEL_PLAN_HASH,
    LABEL_WORKLOAD,
    PLAN_PATH,
)
from statmux.operator.config import ConfigError, OperatorConfig
from statmux.operator.resources import (
    GPU,
    MAX_WORKLOAD_NAME,
    Owner,
    desired_objects,
    group_workloads,
    pod_layout,
)
from statmux.placement.plan import Plan

OWNER = Owner(name="a" * 36, namespace="ns", uid="u-1")
IMAGES = {"runtime_image": "rt:1", "router_image": "router:1"}
CFG = OperatorConfig(**IMAGES)


def plan(groups: list[tuple[int, int, list[str]]], gpus_per_node: int = 8) -> Plan:
    return make_test_plan([(pp, tp, ms[:1]) for pp, tp, ms in groups], gpus_per_node=gpus_per_node)


def env_of(container: dict) -> dict[str, object]:
    return {
        e["name"]: e.get("value", e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"))
        for e in container["env"]
    }


@given(st.integers(1, 512), st.integers(1, 64))
def test_pod_layout_covers_the_group_with_equal_pods(gpus: int, per_node: int) -> None:
    pods, per_pod = pod_layout(gpus, per_node)
    assert pods * per_pod == gpus
    assert per_pod <= per_node
    assert pods >= -(-gpus // per_node)  # never fewer pods than nodes needed


def test_every_object_is_owned_and_labelled() -> None:
    objs = desired_objects(OWNER, plan([(2, 2, ["a"]), (1, 1, ["b"])]), CFG, "StatefulSet")
    kinds = [o["kind"] for o in objs]
    assert kinds.count("StatefulSet") == 2 and kinds.count("Deployment") == 1
    assert kinds.count("Service") == 3 and kinds.count("ConfigMap") == 3
    for o in objs:
        meta = o["metadata"]
        ref = meta["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ModelSet",
            OWNER.name,
            "u-1",
            True,
        )
        assert meta["labels"][LABEL_MANAGED_BY] == "statmux"
        assert meta["labels"][LABEL_MODELSET] == OWNER.name
        assert meta["namespace"] == "ns"
        assert len(meta["name"]) <= MAX_WORKLOAD_NAME + len("-plan")
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names))
    assert ("ConfigMap", f"{OWNER.name}-plan") in names
    assert ("Deployment", f"{OWNER.name}-router") in names


def test_statefulset_gpus_env_and_rendezvous() -> None:
    p = plan([(4, 4, ["a"])], gpus_per_node=8)  # 16 GPUs -> 2 pods x 8
    objs = desired_objects(OWNER, p, CFG, "StatefulSet", gpu_product="H100")
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    svc = next(
        o
        for o in objs
        if o["kind"] == "Service" and o["metadata"]["name"] == sts["metadata"]["name"]
    )
    name = sts["metadata"]["name"]
    assert len(name) <= MAX_WORKLOAD_NAME
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == name
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in sts["spec"]["selector"]["matchLabels"].items())
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert labels[LABEL_WORKLOAD] == name and LABEL_PLAN_HASH not in labels
    c = pod["spec"]["containers"][0]
    assert c["resources"]["requests"][GPU] == c["resources"]["limits"][GPU] == "8"
    assert c["image"] == "rt:1"
    env = env_of(c)
    assert env["MASTER_ADDR"] == f"{name}-0.{name}.ns.svc.cluster.local"
    assert env["LWS_LEADER_ADDRESS"] == env["MASTER_ADDR"]
    assert env["WORLD_SIZE"] == "16" and env["NPROC_PER_NODE"] == "8"
    assert env["LWS_GROUP_SIZE"] == "2"
    assert (
        env["NODE_RANK"]
        == env["LWS_WORKER_INDEX"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert "RANK" not in env  # 8 processes per pod: the runtime sets RANK per process
    assert c["command"][c["command"].index("--plan") + 1] == PLAN_PATH
    assert c["command"][c["command"].index("--group") + 1] == "g0"
    # only what the runtime reads (statmux.contract): no STATMUX_*, NNODES or POD_NAME
    assert not [k for k in env if k.startswith("STATMUX_") or k in ("NNODES", "POD_NAME")]
    assert env["MASTER_PORT"] == str(CFG.master_port)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    vol = pod["spec"]["volumes"][0]["configMap"]["name"]
    assert vol == f"{name}-plan" and any(o["metadata"]["name"] == vol for o in objs)


def test_single_gpu_pods_get_rank() -> None:
    objs = desired_objects(OWNER, plan([(1, 1, ["a"])]), CFG, "StatefulSet")
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert env["RANK"] == env["NODE_RANK"] and env["WORLD_SIZE"] == "1"


def test_the_grace_period_covers_the_runtime_drain() -> None:
    objs = desired_objects(OWNER, plan([(1, 1, ["a"])]), CFG, "StatefulSet")
    pod = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    drain = float(command[command.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_containers_report_their_last_log_lines_when_they_fail() -> None:
    # the runtime's one-line reason (e.g. weights not found) must reach the pod's status, which
    # pod_failures copies into the ModelSet's Degraded condition
    objs = desired_objects(OWNER, plan([(2, 1, ["a"]), (1, 1, ["b"])]), CFG, "StatefulSet")
    containers = [
        c
        for o in objs
        if o["kind"] in ("StatefulSet", "Deployment")
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert {c["name"] for c in containers} == {"runtime", "router"}
    assert all(c["terminationMessagePolicy"] == "FallbackToLogsOnError" for c in containers)


def test_group_hash_tracks_group_content_only() -> None:
    a = group_workloads(OWNER, plan([(2, 1, ["a"]), (1, 1, ["b"])]), CFG, "StatefulSet")
    b = group_workloads(OWNER, plan([(2, 1, ["a"]), (1, 2, ["b"])]), CFG, "StatefulSet")
    assert a[0].name == b[0].name  # untouched group keeps its workload
    assert a[1].name != b[1].name  # changed group rolls
    img = group_workloads(
        OWNER, plan([(2, 1, ["a"])]), replace(CFG, runtime_image="rt:2"), "StatefulSet"
    )
    assert img[0].hash != a[0].hash
    sts = desired_objects(OWNER, plan([(2, 1, ["a"])]), CFG, "StatefulSet")
    assert {
        o["metadata"]["labels"].get(LABEL_GROUP_HASH) for o in sts if o["kind"] == "StatefulSet"
    } == {a[0].hash}


def test_leaderworkerset_path() -> None:
    objs = desired_objects(OWNER, plan([(2, 8, ["a"])]), CFG, "LeaderWorkerSet")
    kinds = [o["kind"] for o in objs]
    assert "StatefulSet" not in kinds and kinds.count("LeaderWorkerSet") == 1
    # LWS creates the headless Service itself: only the router Service is ours
    assert kinds.count("Service") == 1
    lws = next(o for o in objs if o["kind"] == "LeaderWorkerSet")
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["size"] == 2 and t["restartPolicy"] == "RecreateGroupOnPodRestart"
    for tpl, role in ((t["leaderTemplate"], "leader"), (t["workerTemplate"], "worker")):
        assert tpl["metadata"]["labels"]["statmux.io/role"] == role
        c = tpl["spec"]["containers"][0]
        assert c["resources"]["limits"][GPU] == "8"
        assert env_of(c)["MASTER_ADDR"] == "$(LWS_LEADER_ADDRESS)"


def pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "StatefulSet":
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        t = obj["spec"]["leaderWorkerTemplate"]
        return [t["leaderTemplate"], t["workerTemplate"]]
    return []


def test_pod_cpu_and_memory_scale_with_gpus_and_cpu_is_never_limited() -> None:
    """STATMUX_GROUP_CPU_PER_GPU / _MEMORY_PER_GPU (chart: operator.groupPods) and the
    router's: unset by default; when set, a group pod asks for them times its GPUs."""
    cfg = OperatorConfig.from_env(
        {
            "STATMUX_GROUP_CPU_PER_GPU": "1500m",
            "STATMUX_GROUP_MEMORY_PER_GPU": "16Gi",
            "STATMUX_ROUTER_CPU": "2",
            "STATMUX_ROUTER_MEMORY": "1Gi",
        }
    )
    p = plan([(2, 8, ["a"]), (1, 2, ["b"])])  # 2 pods of 8 GPUs; 1 pod of 2
    for kind in ("StatefulSet", "LeaderWorkerSet"):
        objs = desired_objects(OWNER, p, replace(CFG, **vars(cfg) | IMAGES), kind)
        pods = [t["spec"] for o in objs for t in pod_templates(o)]
        got = sorted(
            (c["resources"]["requests"][GPU], c["resources"]["requests"]["cpu"],
             c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"],
             "cpu" in c["resources"]["limits"])
            for pod in pods
            for c in pod["containers"]
        )  # fmt: skip
        assert ("8", "12", "128Gi", "128Gi", False) in got, (kind, got)
        if kind == "StatefulSet":
            assert ("2", "3", "32Gi", "32Gi", False) in got, got
        router = next(o for o in objs if o["kind"] == "Deployment")
        res = router["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert res == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    default = desired_objects(OWNER, p, CFG, "StatefulSet")
    sts = next(o for o in default if o["kind"] == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {GPU}


def test_bad_pod_resource_settings_name_the_variable() -> None:
    for name, raw, why in [
        ("STATMUX_GROUP_CPU_PER_GPU", "four", "is not a Kubernetes quantity"),
        ("STATMUX_GROUP_CPU_PER_GPU", "0.0001", "finer than a millicore"),
        ("STATMUX_GROUP_MEMORY_PER_GPU", "16GB", "is not a Kubernetes quantity"),
        ("STATMUX_ROUTER_MEMORY", "0", "must be more than 0"),
    ]:
        with pytest.raises(ConfigError, match=f"{name}.*{why}"):
            OperatorConfig.from_env({name: raw})


def test_gang_hooks() -> None:
    kueue = desired_objects(
        OWNER, plan([(2, 8, ["a"])]), replace(CFG, gang="kueue", kueue_queue="q"), "StatefulSet"
    )
    sts = next(o for o in kueue if o["kind"] == "StatefulSet")
    meta = sts["spec"]["template"]["metadata"]
    assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == sts["metadata"]["name"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert meta["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
    volcano = desired_objects(
        OWNER, plan([(2, 8, ["a"])]), replace(CFG, gang="volcano"), "StatefulSet"
    )
    pg = next(o for o in volcano if o["kind"] == "PodGroup")
    sts = next(o for o in volcano if o["kind"] == "StatefulSet")
    assert pg["metadata"]["name"] == sts["metadata"]["name"]
    assert pg["spec"]["minMember"] == 2 and pg["spec"]["minResources"][GPU] == "16"
    assert sts["spec"]["template"]["spec"]["schedulerName"] == "volcano"
    none = desired_objects(OWNER, plan([(2, 8, ["a"])]), CFG, "StatefulSet")
    assert all(o["kind"] != "PodGroup" for o in none)


def test_router_objects() -> None:
    """The router Deployment runs a command the real `statmux router` accepts, over the Plan
    and a groups.json naming every group's leader through its headless Service."""
    import json

    from statmux.runtime.router import build_parser

    p = plan([(1, 1, ["a"]), (2, 1, ["b"])])
    objs = desired_objects(OWNER, p, CFG, "StatefulSet")
    dep = next(o for o in objs if o["kind"] == "Deployment")
    svc = next(
        o for o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-router")
    )
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "router:1"
    assert c["command"][:2] == ["statmux", "router"]
    args = build_parser().parse_args(c["command"][2:])
    assert (args.plan, args.groups_file) == (PLAN_PATH, GROUPS_PATH)
    assert (args.http_port, args.grpc_port, args.ready_when) == (8000, 8001, "any")
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert GPU not in str(c.get("resources"))
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {x["name"] for x in svc["spec"]["ports"]} == {"http", "grpc"}
    cm_name = dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    assert cm_name == f"{OWNER.name}-plan"
    # a new plan must not restart the router: it follows the ConfigMap itself
    assert LABEL_PLAN_HASH not in str(dep["spec"]["template"])
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name)
    groups = json.loads(cm["data"][GROUPS_KEY])
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    assert set(groups) == {g.name for g in p.groups}
    for gw in group_workloads(OWNER, p, CFG, "StatefulSet"):
        assert gw.name in services
        assert groups[gw.group] == f"http://{gw.name}-0.{gw.name}.ns.svc.cluster.local:8000"


def test_the_router_accepts_the_operators_configmap(tmp_path) -> None:
    from statmux.runtime.router import ConfigSource

    p = plan([(1, 1, ["a"]), (2, 1, ["b"])])
    objs = desired_objects(OWNER, p, CFG, "LeaderWorkerSet")
    cm = next(o for o in objs if o["metadata"]["name"] == f"{OWNER.name}-plan")
    for key in ("plan.json", GROUPS_KEY):
        (tmp_path / key).write_text(cm["data"][key])
    config = ConfigSource(str(tmp_path / "plan.json"), None, str(tmp_path / GROUPS_KEY)).load()
    assert config.unrouted == ()
    assert [g.name for g in config.groups] == [g.name for g in p.groups]
    assert set(config.hosts) == {m.name for g in p.groups for m in g.models}


def test_every_group_pod_has_a_readiness_probe_that_its_ranks_answer() -> None:
    """Leader pods answer it from the front end, pods of worker ranks from --worker-health."""
    for kind in ("StatefulSet", "LeaderWorkerSet"):
        objs = desired_objects(OWNER, plan([(4, 4, ["a"])]), CFG, kind)
        workload = next(o for o in objs if o["kind"] == kind)
        if kind == "StatefulSet":
            templates = [workload["spec"]["template"]]
        else:
            lws = workload["spec"]["leaderWorkerTemplate"]
            templates = [lws.get("leaderTemplate") or lws["workerTemplate"], lws["workerTemplate"]]
        for t in templates:
            c = t["spec"]["containers"][0]
            probe = c["readinessProbe"]["httpGet"]
            assert probe == {"path": "/v2/health/ready", "port": "http"}, kind
            assert "--worker-health" in c["command"], kind
            assert any(p["name"] == "http" for p in c["ports"]), kind
