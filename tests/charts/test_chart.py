"""The Helm chart charts/statmux: CRD copy, RBAC rules, dashboard, and (with the cached
helm binary from e2e/cluster/build.sh) `helm lint` and `helm template` over several values.

The rendered manifests are validated against a real API server in tests/e2e.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_tools import CHART, ROOT, binary, kube_version, run

RBAC_FILE = CHART / "files" / "rbac.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
HELM = binary("helm")
# `make test` builds helm first and sets STATMUX_REQUIRE_HELM: there a missing helm is a
# failure (the test then runs without it), not a silent skip.
needs_helm = pytest.mark.skipif(
    HELM is None and not os.environ.get("STATMUX_REQUIRE_HELM"),
    reason="no cached helm binary (run e2e/cluster/build.sh helm)",
)


def helm_exe() -> Path:
    if HELM is None:
        pytest.fail(
            "STATMUX_REQUIRE_HELM is set but no helm is cached: run e2e/cluster/build.sh helm"
        )
    return HELM


def kube_version_flag() -> str:
    return kube_version().lstrip("v").split("-")[0]


# --------------------------------------------------------------------------- static checks
def test_chart_crd_is_the_generated_crd():
    from statmux.operator.crd import render_crd

    chart_crd = (CHART / "crds" / "modelset.yaml").read_text()
    assert chart_crd == render_crd(), (
        "charts/statmux/crds/modelset.yaml drifted from the schema: "
        "run `python -m statmux.operator.crd --write`"
    )
    top = ROOT / "crds" / "modelset.yaml"
    if top.exists():
        assert chart_crd == top.read_text(), "the chart's CRD differs from crds/modelset.yaml"


def _canonical(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples: equal sets grant exactly the same."""
    out = set()
    for r in rules:
        assert set(r) <= {"apiGroups", "resources", "verbs", "resourceNames"}, r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v))
    return out


def chart_rbac() -> dict[str, list[dict[str, Any]]]:
    data = yaml.safe_load(RBAC_FILE.read_text())
    assert set(data) == {"namespaced", "cluster"}, set(data)
    return {k: v or [] for k, v in data.items()}


def test_chart_rbac_equals_the_operators_rules():
    from sync_chart_rbac import operator_rules, render

    hint = "run `python tests/helpers/sync_chart_rbac.py --write`"
    assert chart_rbac() == operator_rules(), (
        f"files/rbac.yaml differs from operator/rbac.py: {hint}"
    )
    assert RBAC_FILE.read_text() == render(), f"files/rbac.yaml is not the generated text: {hint}"


def test_rbac_grants_no_wildcards_or_secrets():
    for scope, rules in chart_rbac().items():
        for group, resource, verb in _canonical(rules):
            assert "*" not in (group, resource, verb), f"{scope}: wildcard in {rules}"
            assert resource != "secrets", f"{scope}: the operator needs no Secrets"
            assert verb not in ("escalate", "bind", "impersonate"), (scope, resource, verb)


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_covers_rate_attainment_latency_queue_and_gpu_memory():
    dash = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("rate", "slo attainment", "latency", "queue", "gpu memory", "rejections"):
        assert word in titles, f"no panel about {word!r}: {titles}"
    exprs = " ".join(_exprs(dash))
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "statmux_requests_within_slo_total",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_pending_request_count",
        "statmux_gpu_memory_used_bytes",
        "statmux_router_within_slo_total",
        "statmux_router_requests_total",
        "statmux_router_rejected_total",
    ):
        assert metric in exprs, f"the dashboard never queries {metric}"
    # Per model: every serving panel groups by the model label.
    for p in dash["panels"]:
        if "memory" not in p["title"].lower():
            assert all(re.search(r"by \(model\b", t["expr"]) for t in p["targets"]), p["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    for ref in set(re.findall(r"\$(\w+)", exprs)) - {"__rate_interval"}:
        assert ref in variables, f"the queries use ${ref}, which is not a dashboard variable"


def test_dashboard_metric_names_exist_in_the_runtime():
    """Every metric the dashboard queries is on the runtime's or the router's /metrics."""
    from live_metrics import router_exposition, scrape_live_server

    exposed = scrape_live_server() | router_exposition()
    exprs = " ".join(_exprs(json.loads(DASHBOARD.read_text())))
    # Metric names precede "{" in the queries (label names such as statmux_io_modelset don't).
    names = set(re.findall(r"\b((?:nv_inference|statmux)_[a-z_]+)\{", exprs))
    assert any(n.startswith("statmux_router_") for n in names)
    on_gpu_only = {n for n in names if "gpu_memory" in n}  # exported only with CUDA
    for name in sorted(names - on_gpu_only):
        assert exposed.queryable(name), f"{name} is not on the runtime's or router's /metrics"


# --------------------------------------------------------------------------- helm
def helm_template(*sets: str, values: dict[str, Any] | None = None, tmp: Path | None = None):
    args: list[str | Path] = [
        helm_exe(),
        "template",
        "statmux",
        CHART,
        "--namespace",
        "statmux-system",
        "--kube-version",
        kube_version_flag(),
        "--include-crds",
    ]
    for s in sets:
        args += ["--set", s]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", path]
    out = run(args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@needs_helm
def test_helm_lint_passes():
    out = run(
        [helm_exe(), "lint", CHART, "--strict", "--kube-version", kube_version_flag()], check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@needs_helm
def test_default_render_is_a_hardened_cluster_wide_operator():
    docs = helm_template()
    assert [d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")] == [
        "modelsets.statmux.io"
    ]
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    liveness_port = next(
        p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"]
    )
    assert f":{liveness_port['containerPort']}/healthz" in " ".join(c["args"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts
    tmp_volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in tmp_volume
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STATMUX_RUNTIME_IMAGE"] == "statmux/runtime:0.1.0"
    assert env["STATMUX_ROUTER_IMAGE"] == "statmux/runtime:0.1.0"
    assert env["STATMUX_WATCH_NAMESPACES"] == ""
    # the chart's default settings parse, and are the operator's own defaults
    from statmux.operator.config import OperatorConfig

    cfg, default = OperatorConfig.from_env(env), OperatorConfig()
    for field in (
        "resync_seconds",
        "rollout_timeout_seconds",
        "gang_restart_backoff_seconds",
        "gang_restart_backoff_max_seconds",
        "gang_restart_stable_seconds",
    ):
        assert getattr(cfg, field) == getattr(default, field), field
    assert "STATMUX_GANG_RESTART_BACKOFF_SECONDS" in env
    assert c["image"] == "statmux/operator:0.1.0"
    (sa,) = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    # Cluster-wide: one ClusterRole holding every rule, bound to the ServiceAccount.
    assert not by_kind(docs, "Role")
    (role,) = by_kind(docs, "ClusterRole")
    rbac = chart_rbac()
    assert _canonical(role["rules"]) == _canonical(rbac["namespaced"] + rbac["cluster"])
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "statmux-system"}
    ]
    assert not by_kind(docs, "ServiceMonitor")
    assert not [d for d in by_kind(docs, "ConfigMap") if "grafana_dashboard" in str(d)]


@needs_helm
def test_pod_resource_values_reach_the_operator() -> None:
    """operator.groupPods / operator.routerPod: unset by default (no env), else env the
    operator parses into the group pods' and the router's requests."""
    from statmux.operator.config import OperatorConfig

    def operator_env(*sets: str) -> dict[str, str]:
        (dep,) = by_kind(helm_template(*sets), "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}

    names = {"STATMUX_GROUP_CPU_PER_GPU", "STATMUX_GROUP_MEMORY_PER_GPU"}
    names |= {"STATMUX_ROUTER_CPU", "STATMUX_ROUTER_MEMORY"}
    assert not names & set(operator_env())
    env = operator_env(
        "operator.groupPods.cpuPerGpu=4",
        "operator.groupPods.memoryPerGpu=32Gi",
        "operator.routerPod.cpu=500m",
        "operator.routerPod.memory=1Gi",
    )
    assert names <= set(env)
    cfg = OperatorConfig.from_env(env)
    assert (cfg.group_cpu_per_gpu_millis, cfg.group_memory_per_gpu_bytes) == (4000, 32 * 2**30)
    assert (cfg.router_cpu_millis, cfg.router_memory_bytes) == (500, 2**30)


@needs_helm
def test_watch_namespaces_render_one_role_per_namespace(tmp_path):
    docs = helm_template(
        values={
            "watchNamespaces": ["team-a", "team-b"],
            "image": {"runtime": {"repository": "reg.example/rt", "tag": "1.2.3"}},
        },
        tmp=tmp_path,
    )
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    rbac = chart_rbac()
    for role in roles:
        assert _canonical(role["rules"]) == _canonical(rbac["namespaced"])
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    cluster_roles = by_kind(docs, "ClusterRole")
    if rbac["cluster"]:
        (cr,) = cluster_roles
        assert _canonical(cr["rules"]) == _canonical(rbac["cluster"])
    else:
        assert not cluster_roles
    (dep,) = by_kind(docs, "Deployment")
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["STATMUX_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["STATMUX_RUNTIME_IMAGE"] == "reg.example/rt:1.2.3"


@needs_helm
def test_service_monitor_and_dashboard_render_when_enabled():
    docs = helm_template("metrics.serviceMonitor.enabled=true", "grafana.dashboard.enabled=true")
    monitors = {m["metadata"]["name"]: m for m in by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"statmux-runtime", "statmux-operator"}
    runtime = monitors["statmux-runtime"]["spec"]
    assert runtime["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "statmux"}
    assert runtime["endpoints"][0]["path"] == "/metrics"
    # The ServiceMonitor's port must be the one the operator's Services name.
    from statmux.operator.config import OperatorConfig
    from statmux.operator.resources import Owner, router_service

    svc = router_service(Owner("x", "ns", "uid"), OperatorConfig())
    assert runtime["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    (dash_cm,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("dashboard")
    ]
    assert dash_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (payload,) = dash_cm["data"].values()
    assert json.loads(payload) == json.loads(DASHBOARD.read_text())


@needs_helm
def test_operator_disabled_keeps_crd_account_and_rbac():
    docs = helm_template("operator.enabled=false")
    kinds = {d["kind"] for d in docs}
    assert "Deployment" not in kinds
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole"} <= kinds


@needs_helm
def test_bad_values_fail_with_a_message():
    out = run(
        [
            helm_exe(),
            "template",
            "x",
            CHART,
            "--kube-version",
            kube_version_flag(),
            "--set",
            "serviceAccount.create=false",
        ],
        check=False,
    )
    assert out.returncode != 0
    assert "serviceAccount.name is required" in out.stderr
