"""Exactly the API access the operator uses: the chart renders least-privilege RBAC from this.

Each rule says why it is needed. `tests/operator/test_rbac.py` records every call the
reconciler makes against an in-memory API and fails if one is not covered here.

    python -m statmux.operator.rbac     # prints the rules as YAML (ClusterRole / Role)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Rule:
    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False  # needs a ClusterRole even when watching one namespace
    optional: str | None = None  # only needed with this feature (a CRD that may be absent)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


# Server-side apply is a PATCH that creates the object when absent: it needs both verbs.
_APPLY = ("create", "patch")
_OWNED = ("get", "list", *_APPLY, "delete")

RULES: tuple[Rule, ...] = (
    Rule(
        "statmux.io",
        ("modelsets",),
        ("get", "list", "watch", "patch"),
        "watch ModelSets; kopf patches its progress annotations",
    ),
    Rule("statmux.io", ("modelsets/status",), ("get", "patch"), "write plan, conditions"),
    Rule(
        "statmux.io",
        ("modelsets/finalizers",),
        ("update",),
        "ownerReferences with blockOwnerDeletion on owned objects",
    ),
    Rule("", ("configmaps",), _OWNED, "the plan ConfigMaps"),
    Rule("", ("services",), _OWNED, "headless group Services and the router Service"),
    Rule("apps", ("statefulsets",), (*_OWNED, "watch"), "group workloads (no-LWS path)"),
    Rule("apps", ("deployments",), _OWNED, "the router"),
    Rule("", ("pods",), ("get", "list", "watch", "delete"), "gang restarts of group pods"),
    Rule("", ("events",), ("create",), "kopf posts handler outcomes as Events"),
    Rule("events.k8s.io", ("events",), ("create",), "kopf posts handler outcomes as Events"),
    Rule(
        "leaderworkerset.x-k8s.io",
        ("leaderworkersets",),
        _OWNED,
        "group workloads when the LWS CRD is installed",
        optional="leaderworkerset",
    ),
    Rule(
        "scheduling.volcano.sh",
        ("podgroups",),
        _OWNED,
        "gang scheduling with STATMUX_GANG=volcano",
        optional="volcano",
    ),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf discovers served resources",
        cluster_scoped=True,
    ),
    Rule(
        "",
        ("namespaces",),
        ("list", "watch"),
        "kopf follows namespaces when watching all of them",
        cluster_scoped=True,
    ),
)


def allowed(api_group: str, resource: str, verb: str) -> bool:
    return any(
        r.api_group == api_group and resource in r.resources and verb in r.verbs for r in RULES
    )


def rules(
    include_optional: bool = True, cluster_scoped: bool | None = None
) -> list[dict[str, list[str]]]:
    """RBAC rules as Kubernetes dicts; `cluster_scoped` filters by scope (None: all)."""
    return [
        r.as_dict()
        for r in RULES
        if (include_optional or r.optional is None)
        and (cluster_scoped is None or r.cluster_scoped == cluster_scoped)
    ]


def main() -> int:
    doc = {
        "namespacedRules": rules(cluster_scoped=False),
        "clusterRules": rules(cluster_scoped=True),
    }
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
