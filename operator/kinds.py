"""The Kubernetes resource kinds the operator reads and writes (one table, shared by the API
client, the reconciler and the RBAC list)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    api_version: str  # "v1" or "group/version"
    kind: str
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    def path(self, namespace: str, name: str | None = None) -> str:
        """REST path of the collection (or of one object) in a namespace."""
        prefix = "/api/v1" if self.group == "" else f"/apis/{self.api_version}"
        base = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{name}" if name else base


MODELSET = Kind("statmux.io/v1alpha1", "ModelSet", "modelsets")
CONFIGMAP = Kind("v1", "ConfigMap", "configmaps")
SERVICE = Kind("v1", "Service", "services")
POD = Kind("v1", "Pod", "pods")
STATEFULSET = Kind("apps/v1", "StatefulSet", "statefulsets")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
LEADERWORKERSET = Kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets")
VOLCANO_PODGROUP = Kind("scheduling.volcano.sh/v1beta1", "PodGroup", "podgroups")

BY_KIND = {
    k.kind: k
    for k in (
        MODELSET,
        CONFIGMAP,
        SERVICE,
        POD,
        STATEFULSET,
        DEPLOYMENT,
        LEADERWORKERSET,
        VOLCANO_PODGROUP,
    )
}

# What the reconciler owns and garbage-collects by label (pods belong to their workloads).
MANAGED = (CONFIGMAP, SERVICE, STATEFULSET, DEPLOYMENT, LEADERWORKERSET, VOLCANO_PODGROUP)


def kind_of(obj: dict[str, object]) -> Kind:
    return BY_KIND[str(obj["kind"])]
