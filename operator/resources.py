"""Build the manifests (plain dicts) the operator applies for one ModelSet and its Plan.

Objects per ModelSet `<ms>` (all in its namespace, all owned by it):
- ConfigMap `<ms>-plan`: the current Plan (plan.json) and where each group's leader serves
  (groups.json), read by the router, which follows its updates without a restart.
- per plan group, the workload `<ms>-<group>-<hash>` where hash covers everything its pods
  run (the group's slice of the Plan, images, ports, scheduling): a StatefulSet (or a
  LeaderWorkerSet), a headless Service of the same name (StatefulSet path; LWS makes its
  own), a ConfigMap `<workload>-plan` with the Plan the group was made from (so a pod that
  restarts mid-rollout reads its own group, not whatever the new plan calls by that name),
  and with STATMUX_GANG=volcano a Volcano PodGroup of the same name.
- Deployment and Service `<ms>-router`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from statmux.contract import (
    ENV_LWS_GROUP_SIZE,
    ENV_LWS_LEADER_ADDRESS,
    ENV_LWS_WORKER_INDEX,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NODE_RANK,
    ENV_NPROC_PER_NODE,
    ENV_RANK,
    ENV_WORLD_SIZE,
    GROUPS_KEY,
    GROUPS_PATH,
    LABEL_COMPONENT,
    LABEL_GROUP,
    LABEL_GROUP_HASH,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODELSET,
    LABEL_NAME,
    LABEL_PLAN_HASH,
    LABEL_POD_INDEX,
    LABEL_ROLE,
    LABEL_WORKLOAD,
    MANAGER,
    PLAN_DIR,
    PLAN_KEY,
    PLAN_PATH,
)
from statmux.operator.config import OperatorConfig
from statmux.operator.kinds import (
    CONFIGMAP,
    DEPLOYMENT,
    LEADERWORKERSET,
    MODELSET,
    SERVICE,
    STATEFULSET,
    VOLCANO_PODGROUP,
)
from statmux.operator.pod_resources import scaled_resources
from statmux.placement.plan import Plan, short_hash

Obj = dict[str, Any]
WorkloadKind = Literal["StatefulSet", "LeaderWorkerSet"]

GPU = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MAX_WORKLOAD_NAME = 52  # StatefulSet names leave room for "-<ordinal>" and the revision hash


@dataclass(frozen=True)
class Owner:
    """The ModelSet that owns everything built here."""

    name: str
    namespace: str
    uid: str


# How long a group's leader lets accepted requests finish on SIGTERM (statmux runtime
# --drain-timeout); the pod's grace period adds time for the group's shutdown.
RUNTIME_DRAIN_SECONDS = 30


def owner_reference(owner: Owner) -> Obj:
    return {
        "apiVersion": MODELSET.api_version,
        "kind": MODELSET.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def base_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_NAME: "statmux",
        LABEL_INSTANCE: owner.name,
        LABEL_MODELSET: owner.name,
        LABEL_COMPONENT: component,
    }


def selector_for(owner: Owner) -> dict[str, str]:
    """The labels that find every object the operator made for this ModelSet."""
    return {LABEL_MANAGED_BY: MANAGER, LABEL_MODELSET: owner.name}


def _metadata(owner: Owner, name: str, labels: dict[str, str]) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def plan_configmap_name(owner_name: str) -> str:
    return f"{owner_name}-plan"


def router_name(owner_name: str) -> str:
    return f"{owner_name}-router"


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label or "g"


# --------------------------------------------------------------------------- group layout
@dataclass(frozen=True)
class GroupWorkload:
    """Everything derived for one placement group."""

    group: str  # the Plan's group name, e.g. g0
    name: str  # workload, Service and PodGroup name
    hash: str
    pp: int
    tp: int
    gpus: int
    pods: int
    gpus_per_pod: int
    models: tuple[str, ...]

    @property
    def configmap(self) -> str:
        return f"{self.name}-plan"


def pod_layout(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(pods, GPUs per pod): the fewest pods that fit on nodes of `gpus_per_node` GPUs
    with the same GPU count each (a StatefulSet has one pod template)."""
    if gpus < 1 or gpus_per_node < 1:
        raise ValueError(f"gpus ({gpus}) and gpus_per_node ({gpus_per_node}) must be >= 1")
    pods = -(-gpus // gpus_per_node)
    while gpus % pods:
        pods += 1
    return pods, gpus // pods


def group_workloads(
    owner: Owner,
    plan: Plan,
    cfg: OperatorConfig,
    kind: WorkloadKind,
    gpu_product: str | None = None,
) -> list[GroupWorkload]:
    gpus_per_node = plan.cluster.gpus_per_node
    out = []
    for g in plan.groups:
        pods, per_pod = pod_layout(g.gpus, gpus_per_node)
        # Anything that changes what the pods run changes the hash, hence the name.
        digest = short_hash(
            {
                "group": g.model_dump(mode="json", by_alias=True),
                "gpusPerNode": gpus_per_node,
                "gpuProduct": gpu_product,
                "image": cfg.runtime_image,
                "ports": [cfg.master_port, cfg.serve_port],
                "gang": [cfg.gang, cfg.kueue_queue],
                "kind": kind,
            },
            8,
        )
        room = MAX_WORKLOAD_NAME - len(owner.name) - len(digest) - 2
        label = _dns_label(g.name)[: max(room, 1)].strip("-") or "g"
        out.append(
            GroupWorkload(
                group=g.name,
                name=f"{owner.name}-{label}-{digest}",
                hash=digest,
                pp=g.pp,
                tp=g.tp,
                gpus=g.gpus,
                pods=pods,
                gpus_per_pod=per_pod,
                models=tuple(m.name for m in g.models),
            )
        )
    return out


def leader_address(owner: Owner, gw: GroupWorkload, cfg: OperatorConfig) -> str:
    """DNS name of a group's leader pod (rank 0, the one serving REST) through the group's
    headless Service; the same for StatefulSets and LeaderWorkerSets (pod `<workload>-0`,
    Service `<workload>`)."""
    return f"{gw.name}-0.{gw.name}.{owner.namespace}.svc.{cfg.cluster_domain}"


def group_endpoints(owner: Owner, gws: list[GroupWorkload], cfg: OperatorConfig) -> dict[str, str]:
    """What the router reads (GROUPS_KEY): each plan group's leader REST address."""
    return {gw.group: f"http://{leader_address(owner, gw, cfg)}:{cfg.serve_port}" for gw in gws}


# --------------------------------------------------------------------------- ConfigMaps
def plan_configmap(
    owner: Owner, plan: Plan, name: str | None = None, component: str = "plan"
) -> Obj:
    labels = base_labels(owner, component) | {LABEL_PLAN_HASH: plan.plan_hash}
    return {
        "apiVersion": CONFIGMAP.api_version,
        "kind": CONFIGMAP.kind,
        "metadata": _metadata(owner, name or plan_configmap_name(owner.name), labels),
        "data": {PLAN_KEY: json.dumps(plan.to_dict(), indent=1, sort_keys=True)},
    }


# --------------------------------------------------------------------------- group pods
def group_labels(owner: Owner, gw: GroupWorkload) -> dict[str, str]:
    return base_labels(owner, "group") | {
        LABEL_GROUP: _dns_label(gw.group)[:63],
        LABEL_WORKLOAD: gw.name,
        LABEL_GROUP_HASH: gw.hash,
    }


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def runtime_env(
    owner: Owner, gw: GroupWorkload, cfg: OperatorConfig, kind: WorkloadKind
) -> list[Obj]:
    """The env each group pod gets: where its ranks sit in the group (statmux.contract).

    One pod per node-sized chunk: NPROC_PER_NODE processes per pod, global rank of a
    process = NODE_RANK * NPROC_PER_NODE + local rank (the runtime launcher sets RANK per
    process; the operator sets RANK itself only when a pod runs a single process). The Plan,
    the group and the port reach the runtime as flags (see `pod_template`), nothing else.
    """
    pod_index = f"metadata.labels['{LABEL_POD_INDEX}']"
    env: list[Obj] = []
    if kind == "StatefulSet":
        leader = leader_address(owner, gw, cfg)
        env += [
            {"name": ENV_LWS_LEADER_ADDRESS, "value": leader},
            {"name": ENV_LWS_GROUP_SIZE, "value": str(gw.pods)},
            _field_env(ENV_LWS_WORKER_INDEX, pod_index),
            {"name": ENV_MASTER_ADDR, "value": leader},
            _field_env(ENV_NODE_RANK, pod_index),
        ]
        if gw.gpus_per_pod == 1:
            env.append(_field_env(ENV_RANK, pod_index))
    else:
        # The LWS controller injects LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX.
        env += [
            {"name": ENV_MASTER_ADDR, "value": f"$({ENV_LWS_LEADER_ADDRESS})"},
            {"name": ENV_NODE_RANK, "value": f"$({ENV_LWS_WORKER_INDEX})"},
        ]
        if gw.gpus_per_pod == 1:
            env.append({"name": ENV_RANK, "value": f"$({ENV_LWS_WORKER_INDEX})"})
    env += [
        {"name": ENV_MASTER_PORT, "value": str(cfg.master_port)},
        {"name": ENV_WORLD_SIZE, "value": str(gw.gpus)},
        {"name": ENV_NPROC_PER_NODE, "value": str(gw.gpus_per_pod)},
    ]
    return env


def pod_template(
    owner: Owner,
    gw: GroupWorkload,
    cfg: OperatorConfig,
    kind: WorkloadKind,
    gpu_product: str | None,
    role: str | None = None,
) -> Obj:
    labels = group_labels(owner, gw)
    annotations: dict[str, str] = {}
    if role:
        labels[LABEL_ROLE] = role
    if cfg.gang == "kueue":
        labels["kueue.x-k8s.io/pod-group-name"] = gw.name
        annotations["kueue.x-k8s.io/pod-group-total-count"] = str(gw.pods)
        if cfg.kueue_queue:
            labels["kueue.x-k8s.io/queue-name"] = cfg.kueue_queue
    elif cfg.gang == "volcano":
        annotations["scheduling.k8s.io/group-name"] = gw.name
    gpus = str(gw.gpus_per_pod)
    container = {
        "name": "runtime",
        "image": cfg.runtime_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": [
            "statmux",
            "runtime",
            "--plan",
            PLAN_PATH,
            "--group",
            gw.group,
            "--device",
            "cuda",
            "--http-port",
            str(cfg.serve_port),
            "--drain-timeout",
            str(RUNTIME_DRAIN_SECONDS),
            # pods without the leader answer the probe below too (runtime/worker_health.py)
            "--worker-health",
        ],
        "env": runtime_env(owner, gw, cfg, kind),
        # A runtime that exits on a user mistake (weights not found, a bad Plan) prints one
        # line saying why; with this, that line becomes the termination message and so the
        # ModelSet's Degraded condition (pod_failures), not just "exit 2: Error".
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Ready = the leader's front end is ready: every rank joined and loaded its shards,
        # and it is not draining. Without it a pod counts as ready as soon as it starts, and
        # GroupsReady (StatefulSet readyReplicas) would turn True while weights still load.
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "ports": [
            {"name": "http", "containerPort": cfg.serve_port, "protocol": "TCP"},
            {"name": "dist", "containerPort": cfg.master_port, "protocol": "TCP"},
        ],
        "resources": scaled_resources(
            {"requests": {GPU: gpus}, "limits": {GPU: gpus}},
            cfg.group_cpu_per_gpu_millis,
            cfg.group_memory_per_gpu_bytes,
            gw.gpus_per_pod,
        ),
        "volumeMounts": [{"name": "plan", "mountPath": PLAN_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    spec: Obj = {
        "containers": [container],
        "volumes": [{"name": "plan", "configMap": {"name": gw.configmap}}],
        # the runtime drains for up to RUNTIME_DRAIN_SECONDS on SIGTERM, then shuts the group
        # down; no preStop hook is needed: readiness goes false at once and new requests get
        # 503 with Connection: close while the listener stays open
        "terminationGracePeriodSeconds": RUNTIME_DRAIN_SECONDS + 15,
    }
    if gpu_product:
        spec["nodeSelector"] = {GPU_PRODUCT_LABEL: gpu_product}
    if cfg.gang == "volcano":
        spec["schedulerName"] = "volcano"
    meta: Obj = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": spec}


def group_statefulset(
    owner: Owner, gw: GroupWorkload, cfg: OperatorConfig, plan_hash_: str, gpu_product: str | None
) -> Obj:
    labels = group_labels(owner, gw) | {LABEL_PLAN_HASH: plan_hash_}
    return {
        "apiVersion": STATEFULSET.api_version,
        "kind": STATEFULSET.kind,
        "metadata": _metadata(owner, gw.name, labels),
        "spec": {
            "serviceName": gw.name,
            "replicas": gw.pods,
            # All ranks start together; the leader is pod 0 (its DNS name is MASTER_ADDR).
            "podManagementPolicy": "Parallel",
            # Pods never roll in place: new content gets a new workload, and a gang restart
            # bumps the epoch annotation and deletes the old epoch's pods.
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": {LABEL_MODELSET: owner.name, LABEL_WORKLOAD: gw.name}},
            "template": pod_template(owner, gw, cfg, "StatefulSet", gpu_product),
        },
    }


def group_leaderworkerset(
    owner: Owner, gw: GroupWorkload, cfg: OperatorConfig, plan_hash_: str, gpu_product: str | None
) -> Obj:
    labels = group_labels(owner, gw) | {LABEL_PLAN_HASH: plan_hash_}
    return {
        "apiVersion": LEADERWORKERSET.api_version,
        "kind": LEADERWORKERSET.kind,
        "metadata": _metadata(owner, gw.name, labels),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": gw.pods,
                # LWS's own gang semantics: any pod restart recreates the whole group.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": pod_template(
                    owner, gw, cfg, "LeaderWorkerSet", gpu_product, role="leader"
                ),
                "workerTemplate": pod_template(
                    owner, gw, cfg, "LeaderWorkerSet", gpu_product, role="worker"
                ),
            },
        },
    }


def group_service(owner: Owner, gw: GroupWorkload, cfg: OperatorConfig, plan_hash_: str) -> Obj:
    """Headless Service: stable DNS names <pod>.<workload> for rendezvous."""
    labels = group_labels(owner, gw) | {LABEL_PLAN_HASH: plan_hash_}
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": _metadata(owner, gw.name, labels),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other before any of them is ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_MODELSET: owner.name, LABEL_WORKLOAD: gw.name},
            "ports": [
                {"name": "dist", "port": cfg.master_port, "targetPort": cfg.master_port},
                {"name": "http", "port": cfg.serve_port, "targetPort": cfg.serve_port},
            ],
        },
    }


def volcano_podgroup(owner: Owner, gw: GroupWorkload, plan_hash_: str) -> Obj:
    labels = group_labels(owner, gw) | {LABEL_PLAN_HASH: plan_hash_}
    return {
        "apiVersion": VOLCANO_PODGROUP.api_version,
        "kind": VOLCANO_PODGROUP.kind,
        "metadata": _metadata(owner, gw.name, labels),
        "spec": {"minMember": gw.pods, "minResources": {GPU: str(gw.gpus)}},
    }


def group_objects(
    owner: Owner,
    plan: Plan,
    gw: GroupWorkload,
    cfg: OperatorConfig,
    kind: WorkloadKind,
    gpu_product: str | None,
) -> list[Obj]:
    """The objects of one group, in the order they must exist (config before pods)."""
    ph = plan.plan_hash
    cm = plan_configmap(owner, plan, gw.configmap, component="group")
    cm["metadata"]["labels"] |= {k: v for k, v in group_labels(owner, gw).items()}
    out = [cm]
    if cfg.gang == "volcano":
        out.append(volcano_podgroup(owner, gw, ph))
    if kind == "StatefulSet":
        out.append(group_service(owner, gw, cfg, ph))
        out.append(group_statefulset(owner, gw, cfg, ph, gpu_product))
    else:
        out.append(group_leaderworkerset(owner, gw, cfg, ph, gpu_product))
    return out


# --------------------------------------------------------------------------- router
def router_deployment(owner: Owner, plan: Plan, cfg: OperatorConfig) -> Obj:
    """The router: `statmux router` over the Plan and the group addresses in the ModelSet's
    ConfigMap. It follows ConfigMap updates itself, so a new plan does not restart it (the
    plan hash is on the Deployment, not in its pod template). Its readiness probe asks
    whether it reaches at least one group (--ready-when any): one dead group must not take
    the others' models off the Service."""
    name = router_name(owner.name)
    labels = base_labels(owner, "router")
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2}
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": _metadata(owner, name, labels | {LABEL_PLAN_HASH: plan.plan_hash}),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {LABEL_MODELSET: owner.name, LABEL_COMPONENT: "router"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "router",
                            "image": cfg.router_image,
                            "imagePullPolicy": cfg.image_pull_policy,
                            "command": router_command(cfg),
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "ports": [
                                {
                                    "name": "http",
                                    "containerPort": cfg.serve_port,
                                    "protocol": "TCP",
                                },
                                {"name": "grpc", "containerPort": cfg.grpc_port, "protocol": "TCP"},
                            ],
                            "readinessProbe": probe | {"failureThreshold": 2},
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 10,
                                "failureThreshold": 3,
                            },
                            "resources": scaled_resources(
                                {}, cfg.router_cpu_millis, cfg.router_memory_bytes, 1
                            ),
                            "volumeMounts": [
                                {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True}
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "plan", "configMap": {"name": plan_configmap_name(owner.name)}}
                    ],
                    "terminationGracePeriodSeconds": 40,  # the router drains for up to 30 s
                },
            },
        },
    }


def router_command(cfg: OperatorConfig) -> list[str]:
    return [
        "statmux",
        "router",
        "--plan",
        PLAN_PATH,
        "--groups-file",
        GROUPS_PATH,
        "--http-port",
        str(cfg.serve_port),
        "--grpc-port",
        str(cfg.grpc_port),
        "--ready-when",
        "any",
        "--drain-timeout",
        "30",
    ]


def router_service(owner: Owner, cfg: OperatorConfig) -> Obj:
    name = router_name(owner.name)
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": _metadata(owner, name, base_labels(owner, "router")),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_MODELSET: owner.name, LABEL_COMPONENT: "router"},
            "ports": [
                {"name": "http", "port": cfg.serve_port, "targetPort": cfg.serve_port},
                {"name": "grpc", "port": cfg.grpc_port, "targetPort": cfg.grpc_port},
            ],
        },
    }


def desired_objects(
    owner: Owner,
    plan: Plan,
    cfg: OperatorConfig,
    kind: WorkloadKind,
    gpu_product: str | None = None,
) -> list[Obj]:
    """Everything the ModelSet should own for this Plan, in apply order."""
    gws = group_workloads(owner, plan, cfg, kind, gpu_product)
    router_config = plan_configmap(owner, plan)
    endpoints = group_endpoints(owner, gws, cfg)
    router_config["data"][GROUPS_KEY] = json.dumps(endpoints, indent=1, sort_keys=True)
    out = [router_config]
    for gw in gws:
        out += group_objects(owner, plan, gw, cfg, kind, gpu_product)
    out += [router_service(owner, cfg), router_deployment(owner, plan, cfg)]
    return out
