"""In-memory Kubernetes API (pure-logic unit tests of the reconciler) and spec helpers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

from statmux.operator.kinds import Kind, kind_of
from statmux.operator.kube import Conflict
from statmux.operator.resources import Owner
from statmux.placement.plan import Plan

HELPERS = str(Path(__file__).resolve().parents[1] / "helpers")
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)

from plans import make_test_plan  # noqa: E402  (tests/helpers, put on the path above)


def _merge(old: Any, new: Any) -> Any:
    if isinstance(new, dict):
        # RFC 7386: a null removes the key, also under a key the target does not have yet
        out = dict(old) if isinstance(old, dict) else {}
        for k, v in new.items():
            out[k] = _merge(out.get(k), v) if v is not None else None
        return {k: v for k, v in out.items() if v is not None}
    return copy.deepcopy(new)


class FakeApi:
    """Enough of the API server: apply (merge, generation bump on spec change), get, list
    by labels, delete, merge-patch (a resourceVersion in it is a precondition), discovery;
    records every call as (verb, kind)."""

    def __init__(self, served: tuple[str, ...] = ()) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, Kind]] = []
        self.served_kinds = set(served)
        self.fail_after: int | None = None  # raise on the n-th write (crash injection)
        self.writes = 0
        self.version = 0  # resourceVersion of the last write

    def _write(self) -> None:
        self.writes += 1
        if self.fail_after is not None and self.writes > self.fail_after:
            raise ConnectionError("injected crash")

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def apply(self, obj: dict[str, Any], manager: str = "statmux-operator") -> dict[str, Any]:
        kind = kind_of(obj)
        self.calls += [("patch", kind), ("create", kind)]
        self._write()
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        old = self.objects.get(key)
        if old is None:
            new = copy.deepcopy(obj)
            new["metadata"]["generation"] = 1
            new["metadata"]["uid"] = f"uid-{len(self.objects)}"
        else:
            new = _merge(old, obj)
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self._stamp(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind))
        obj = self.objects.get((kind.kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: Kind, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            have = obj["metadata"].get("labels") or {}
            if (
                k == kind.kind
                and ns == namespace
                and all(have.get(a) == b for a, b in labels.items())
            ):
                out.append(copy.deepcopy(obj))
        return out

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        self.calls.append(("delete", kind))
        self._write()
        return self.objects.pop((kind.kind, namespace, name), None) is not None

    def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        self.calls.append(("patch", kind))
        self._write()
        key = (kind.kind, namespace, name)
        if key not in self.objects:
            return None
        want = (patch.get("metadata") or {}).get("resourceVersion")
        have = self.objects[key]["metadata"].get("resourceVersion")
        if want is not None and want != have:
            raise Conflict(f"{kind.kind} {namespace}/{name}: resourceVersion {want} != {have}")
        self.objects[key] = _merge(self.objects[key], patch)
        self._stamp(self.objects[key])
        return copy.deepcopy(self.objects[key])

    def served(self, kind: Kind) -> bool:
        return kind.kind in self.served_kinds or kind.group in ("", "apps")

    # ---- test helpers
    def by_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {n: o for (k, _, n), o in self.objects.items() if k == kind}

    def names(self) -> set[tuple[str, str]]:
        return {(k, n) for (k, _, n) in self.objects}

    def mark_ready(self, kind: str = "StatefulSet") -> None:
        """What the StatefulSet/Deployment controllers would report once pods are ready."""
        for (k, _, _), obj in self.objects.items():
            if k == kind == "StatefulSet":
                obj["status"] = {
                    "readyReplicas": obj["spec"]["replicas"],
                    "observedGeneration": obj["metadata"]["generation"],
                }
            elif k == kind == "Deployment":
                obj["status"] = {"availableReplicas": 1}
            elif k == kind == "LeaderWorkerSet":
                obj["status"] = {"readyReplicas": 1}

    def add_pods(self, statefulset: str, namespace: str = "ns") -> list[dict[str, Any]]:
        """The pods the StatefulSet controller would create from the current template."""
        sts = self.objects[("StatefulSet", namespace, statefulset)]
        template = sts["spec"]["template"]
        pods = []
        for i in range(sts["spec"]["replicas"]):
            name = f"{statefulset}-{i}"
            if ("Pod", namespace, name) in self.objects:
                continue
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": dict(template["metadata"]["labels"]),
                    "annotations": dict(template["metadata"].get("annotations") or {}),
                    "ownerReferences": [{"kind": "StatefulSet", "name": statefulset}],
                },
                "status": {"phase": "Running"},
            }
            self.objects[("Pod", namespace, name)] = pod
            pods.append(copy.deepcopy(pod))
        return pods


def manual_spec(groups: list[tuple[int, int, list[str]]], gpus: int = 16, **extra: Any) -> dict:
    names = sorted({m for _, _, ms in groups for m in ms})
    spec = {
        "models": [{"name": n, "profile": {"builtin": "bert-1.3b"}} for n in names],
        "workload": {"perModel": [{"model": n, "rate": 1.0} for n in names]},
        "cluster": {"gpus": gpus, "gpusPerNode": 8},
        "placement": {
            "policy": "manual",
            "groups": [
                {"pipelineStages": pp, "tensorParallel": tp, "models": ms} for pp, tp, ms in groups
            ],
        },
    }
    spec.update(extra)
    return spec


def table_planner(name: str, namespace: str, spec: Any, previous: Plan | None = None) -> Plan:
    """Stands in for the placement engine: the manual groups as a Plan (pure-logic tests);
    the plan in use (`previous`) plays no part."""
    return make_test_plan(
        [(g.pipeline_stages, g.tensor_parallel, list(g.models)) for g in spec.placement.groups],
        model_set=name,
        policy=spec.placement.policy,
        gpus=spec.cluster.gpus,
        gpus_per_node=spec.cluster.gpus_per_node,
    )


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def owner() -> Owner:
    return Owner(name="demo", namespace="ns", uid="uid-demo")


@pytest.fixture
def helpers() -> Any:
    class H:
        FakeApi = FakeApi
        manual_spec = staticmethod(manual_spec)
        table_planner = staticmethod(table_planner)

    return H
