"""Operator benchmarks on the local control plane (e2e/cluster): prints figures, asserts nothing.

    python benchmarks/operator.py            # table
    python benchmarks/operator.py --json     # one JSON object

1. apply-to-workloads: from `kubectl apply` of a 64-GPU ModelSet (statmux policy) to every
   group workload (StatefulSet) of its plan existing (goal <= 2 s); cold (first ModelSet
   after the operator starts: imports, JIT) and warm (median of --repeats).
2. 100 ModelSets: `kubectl apply` of 100 small ModelSets in one go, to all of them planned
   with their workloads created; then the time until deleting them all has garbage-collected
   everything they owned.

The cluster is brought up with e2e/cluster/up.sh (idempotent), the chart is installed with its
operator scaled to 0, and the operator runs here as a local process with the chart's
ServiceAccount token, as in the e2e tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))

from e2e_harness import (
    RELEASE_NAMESPACE,
    Kubectl,
    OperatorProcess,
    helm_install,
    service_account_kubeconfig,
    wait_until,
)
from k8s_tools import cluster_up, kube_version


def large_modelset(name: str) -> dict[str, Any]:
    """64 GPUs, 32 BERT models of three sizes, a bursty 1-minute workload."""
    sizes = ["bert-1.3b", "bert-2.6b", "bert-6.7b"]
    models = [
        {"name": f"m{i:02d}", "profile": {"builtin": sizes[i % len(sizes)]}} for i in range(32)
    ]
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": name},
        "spec": {
            "models": models,
            "slo": {"sloScale": 5},
            "workload": {
                "durationSeconds": 60,
                "seed": 3,
                "total": {"rate": 60, "cv": 4, "split": "powerLaw", "exponent": 0.5},
            },
            "cluster": {"gpus": 64, "gpuMemory": "13Gi", "gpusPerNode": 8},
            "placement": {"policy": "statmux"},
        },
    }


def small_modelset(name: str, seed: int) -> dict[str, Any]:
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {"name": "a", "profile": {"builtin": "bert-1.3b"}},
                {"name": "b", "profile": {"builtin": "bert-1.3b"}},
            ],
            "workload": {"durationSeconds": 30, "seed": seed, "total": {"rate": 2, "cv": 2}},
            "cluster": {"gpus": 2, "gpuMemory": "13Gi", "gpusPerNode": 2},
            "placement": {"policy": "statmux"},
        },
    }


class Cluster:
    """Fast reads with the kubernetes client (kubectl startup would dominate the timings)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self.api = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def planned_groups(self, ns: str, name: str) -> int | None:
        """Groups in the ModelSet's plan ConfigMap (None before the plan exists)."""
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(f"{name}-plan", ns)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        data = cm.data or {}
        return len(json.loads(data["plan.json"])["groups"]) if "plan.json" in data else None

    def workloads(self, ns: str, selector: str) -> int:
        return len(self.apps.list_namespaced_stateful_set(ns, label_selector=selector).items)

    def modelsets(self, ns: str) -> list[dict[str, Any]]:
        out: Any = self.custom.list_namespaced_custom_object(
            "statmux.io", "v1alpha1", ns, "modelsets"
        )
        items: list[dict[str, Any]] = out["items"]
        return items


def timed_apply(kubectl: Kubectl, cluster: Cluster, ns: str, name: str) -> dict[str, float]:
    """Seconds from `kubectl apply` to the plan ConfigMap, and to every group workload."""
    manifest = yaml.safe_dump(large_modelset(name))
    t0 = time.perf_counter()
    kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    marks: dict[str, float] = {}

    def done() -> bool:
        groups = cluster.planned_groups(ns, name)
        if groups is None:
            return False
        marks.setdefault("plan", time.perf_counter() - t0)
        n = cluster.workloads(ns, f"statmux.io/modelset={name},statmux.io/component=group")
        if n >= groups:
            marks["workloads"] = time.perf_counter() - t0
            marks["groups"] = groups
            return True
        return False

    wait_until(done, 300, f"the workloads of {name}", interval=0.02)
    return marks


def bench_many(kubectl: Kubectl, cluster: Cluster, ns: str, count: int) -> dict[str, float]:
    docs = [small_modelset(f"ms{i:03d}", seed=i) for i in range(count)]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})
    t0 = time.perf_counter()
    kubectl("apply", "-n", ns, "-f", "-", input=text, timeout=300)
    applied = time.perf_counter() - t0

    def reconciled() -> bool:
        done = 0
        for ms in cluster.modelsets(ns):
            st = ms.get("status") or {}
            plan_ready = any(
                c["type"] == "PlanReady" and c["status"] == "True"
                for c in st.get("conditions") or []
            )
            if plan_ready and st.get("observedGeneration") == ms["metadata"]["generation"]:
                done += 1
        return done >= count and cluster.workloads(ns, "statmux.io/component=group") >= count

    wait_until(reconciled, 1800, f"{count} ModelSets reconciled", interval=0.5)
    total = time.perf_counter() - t0

    t1 = time.perf_counter()
    kubectl("delete", "modelsets", "--all", "-n", ns, "--wait=true", "--timeout=600s", timeout=700)
    gone = time.perf_counter() - t1  # kopf's finalizers released, the ModelSets removed

    def collected() -> bool:
        return (
            cluster.workloads(ns, "app.kubernetes.io/managed-by=statmux") == 0
            and not cluster.core.list_namespaced_config_map(
                ns, label_selector="app.kubernetes.io/managed-by=statmux"
            ).items
        )

    wait_until(collected, 600, "garbage collection of the 100 ModelSets", interval=0.5)
    return {
        "count": count,
        "apply_seconds": applied,
        "reconciled_seconds": total,
        "per_modelset_ms": 1000 * total / count,
        "delete_modelsets_seconds": gone,
        "delete_and_gc_seconds": time.perf_counter() - t1,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=5, help="warm runs of the 64-GPU case")
    p.add_argument("--count", type=int, default=100, help="ModelSets in the second case")
    args = p.parse_args(argv)

    admin = cluster_up()
    kubectl = Kubectl(admin)
    helm_install(admin, "operator.replicas=0")
    (dep,) = kubectl.items("deployment", RELEASE_NAMESPACE, "app.kubernetes.io/instance=statmux")
    account = dep["spec"]["template"]["spec"]["serviceAccountName"]
    ns = f"statmux-bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    work = Path(tempfile.mkdtemp(prefix="statmux-bench-"))
    op_kubeconfig = service_account_kubeconfig(
        kubectl, RELEASE_NAMESPACE, account, work / "kubeconfig"
    )
    # Watch only the benchmark's namespace; the status timer is not what is measured.
    operator = OperatorProcess(op_kubeconfig, work / "operator.log", args=["--namespace", ns])
    operator.env["STATMUX_RESYNC_SECONDS"] = "5"
    cluster = Cluster(admin)
    result: dict[str, Any] = {
        "kubernetes": kube_version(),
        "operator_log": str(operator.log_path),
        # Figures swing with other work on the machine: record how busy it was.
        "loadavg_1m_at_start": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    try:
        operator.start()
        operator.wait_healthy()
        cold = timed_apply(kubectl, cluster, ns, "big-cold")
        warm = [timed_apply(kubectl, cluster, ns, f"big-{i}") for i in range(args.repeats)]
        result["apply_to_workloads_64gpu"] = {
            "groups": cold["groups"],
            "cold_seconds": cold["workloads"],
            "cold_plan_seconds": cold["plan"],
            "warm_median_seconds": statistics.median(w["workloads"] for w in warm),
            "warm_max_seconds": max(w["workloads"] for w in warm),
            "warm_median_plan_seconds": statistics.median(w["plan"] for w in warm),
            "goal_seconds": 2.0,
        }
        kubectl("delete", "modelsets", "--all", "-n", ns, "--wait=true", timeout=300)
        result["many_modelsets"] = bench_many(kubectl, cluster, ns, args.count)
    except BaseException:
        print(operator.tail(80), file=sys.stderr)
        raise
    finally:
        operator.stop()
        kubectl("delete", "namespace", ns, "--wait=false", check=False)

    result["loadavg_1m_at_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a = result["apply_to_workloads_64gpu"]
    m = result["many_modelsets"]
    print(
        f"operator benchmarks (Kubernetes {result['kubernetes']}, kwok nodes; "
        f"{result['cpus']} CPUs, load {result['loadavg_1m_at_start']:.1f} at start, "
        f"{result['loadavg_1m_at_end']:.1f} at end)"
    )
    print(f"64-GPU ModelSet, {a['groups']} groups: kubectl apply -> all group workloads created")
    cold, cold_plan = a["cold_seconds"], a["cold_plan_seconds"]
    print(f"  cold (first after start): {cold:.2f} s (plan {cold_plan:.2f} s)")
    print(
        f"  warm median of {args.repeats}: {a['warm_median_seconds']:.2f} s "
        f"(max {a['warm_max_seconds']:.2f} s, plan {a['warm_median_plan_seconds']:.2f} s)"
        f"   goal <= {a['goal_seconds']:.0f} s"
    )
    print(f"{m['count']} ModelSets (2 GPUs each), one kubectl apply:")
    print(
        f"  all planned + workloads created: {m['reconciled_seconds']:.1f} s "
        f"({m['per_modelset_ms']:.0f} ms per ModelSet; apply itself {m['apply_seconds']:.1f} s)"
    )
    print(
        f"  delete all -> ModelSets gone {m['delete_modelsets_seconds']:.1f} s, "
        f"everything garbage-collected {m['delete_and_gc_seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
