"""The names the operator and the runtime (group ranks and router) must agree on.

The operator writes them into the objects it makes; the runtime reads them. Each is defined
once here, so neither side spells one as a literal. The Plan itself (what a group serves)
is the other half of the contract: statmux/placement/plan.py.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- ports
# Defaults of `statmux runtime` / `statmux router`; the operator passes its configured
# ports (STATMUX_SERVE_PORT, STATMUX_MASTER_PORT) on the command line and in MASTER_PORT.
HTTP_PORT: Final = 8000  # Open Inference Protocol over REST, and /metrics
GRPC_PORT: Final = 8001  # Open Inference Protocol over gRPC
MASTER_PORT: Final = 29500  # torch.distributed rendezvous (TCPStore) on a group's rank 0

# --------------------------------------------------------------------------- paths
PLAN_DIR: Final = "/etc/statmux"  # where a pod mounts its Plan ConfigMap
PLAN_KEY: Final = "plan.json"  # the ConfigMap key holding the Plan JSON
PLAN_PATH: Final = f"{PLAN_DIR}/{PLAN_KEY}"  # what `--plan` points at in a pod
# The router's ConfigMap also holds where each group's leader serves REST (`statmux router
# --groups-file`): {"g0": "http://<leader pod>.<group Service>.<ns>.svc.<domain>:<port>"}.
GROUPS_KEY: Final = "groups.json"
GROUPS_PATH: Final = f"{PLAN_DIR}/{GROUPS_KEY}"

# --------------------------------------------------------------------------- environment
# Where a rank sits in its group. The runtime reads torch's variables, or LeaderWorkerSet's
# when torch's are absent (runtime/dist_env.py); the pod launcher turns NODE_RANK and
# NPROC_PER_NODE into one RANK and LOCAL_RANK per process (runtime/launcher.py).
ENV_MASTER_ADDR: Final = "MASTER_ADDR"  # rank 0's address (the group's first pod)
ENV_MASTER_PORT: Final = "MASTER_PORT"  # rank 0's rendezvous port
ENV_WORLD_SIZE: Final = "WORLD_SIZE"  # ranks in the group = pp * tp
ENV_RANK: Final = "RANK"  # this process's global rank in the group
ENV_LOCAL_RANK: Final = "LOCAL_RANK"  # this process's GPU within its pod
ENV_NODE_RANK: Final = "NODE_RANK"  # this pod's index within the group
ENV_NPROC_PER_NODE: Final = "NPROC_PER_NODE"  # rank processes (= GPUs) per pod
ENV_LWS_LEADER_ADDRESS: Final = "LWS_LEADER_ADDRESS"  # set by LeaderWorkerSet (or by us)
ENV_LWS_GROUP_SIZE: Final = "LWS_GROUP_SIZE"  # pods in the group
ENV_LWS_WORKER_INDEX: Final = "LWS_WORKER_INDEX"  # this pod's index within the group
# What the node's device plugin says a rank's GPUs are: "cpu" (the e2e node's GPU stand-in:
# run on CPU with gloo) or "cuda". It overrides `--device`. Real GPU nodes leave it unset, so
# `--device cuda` stands there and a missing GPU is an error, never a silent CPU fallback.
ENV_DEVICE: Final = "STATMUX_DEVICE"

# --------------------------------------------------------------------------- labels
# On every object the operator makes for a ModelSet (selectors use these).
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "statmux"  # the value of LABEL_MANAGED_BY
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "statmux.io/component"  # plan | group | router
LABEL_MODELSET: Final = "statmux.io/modelset"  # the owning ModelSet's name
# On a group's objects and pods.
LABEL_GROUP: Final = "statmux.io/group"  # the Plan's group name (g0, g1, ...)
LABEL_WORKLOAD: Final = "statmux.io/workload"  # StatefulSet/LeaderWorkerSet name
LABEL_GROUP_HASH: Final = "statmux.io/group-hash"  # hash of what the group's pods run
LABEL_ROLE: Final = "statmux.io/role"  # leader | worker (LeaderWorkerSet pods)
LABEL_PLAN_HASH: Final = "statmux.io/plan-hash"  # plan_hash(groups) the object was made from
LABEL_POD_INDEX: Final = "apps.kubernetes.io/pod-index"  # set by the StatefulSet controller

# --------------------------------------------------------------------------- annotations
ANNOTATION_GANG_EPOCH: Final = "statmux.io/gang-epoch"  # bumped to recreate a whole group
ANNOTATION_SPEC_HASH: Final = "statmux.io/spec-hash"  # plan ConfigMap: the spec it answers
# On a group StatefulSet: why its last gang restart happened (the failed pod is gone after it).
ANNOTATION_LAST_FAILURE: Final = "statmux.io/last-failure"
# On a group StatefulSet: the gang restart back-off's state (operator/gang.py), kept on the
# object so that an operator restart neither forgets a back-off nor restarts twice.
ANNOTATION_GANG_RESTARTS: Final = "statmux.io/gang-restarts"  # gang restarts in a row
ANNOTATION_GANG_PENDING: Final = "statmux.io/gang-pending"  # why a restart waits
ANNOTATION_GANG_FAILED_AT: Final = "statmux.io/gang-failed-at"  # when that failure was seen
ANNOTATION_GANG_READY_SINCE: Final = "statmux.io/gang-ready-since"  # ready after a restart
