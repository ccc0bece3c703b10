"""Session fixtures for the e2e tests: the local control plane (e2e/cluster/up.sh, idempotent),
the chart installed with its operator scaled to 0, and the operator running here as a local
process with the chart's ServiceAccount token (so the chart's RBAC is what it gets)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/helpers holds the harness shared with benchmarks/operator.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from e2e_harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    Kubectl,
    OperatorProcess,
    helm_install,
    service_account_kubeconfig,
)
from k8s_tools import CLUSTER_SCRIPTS, binary, cluster_up


@pytest.fixture(scope="session")
def admin_kubeconfig() -> Path:
    kubeconfig = cluster_up()
    if binary("helm") is None:
        subprocess.run([str(CLUSTER_SCRIPTS / "build.sh"), "helm"], check=True, timeout=3600)
    return kubeconfig


@pytest.fixture(scope="session")
def kubectl(admin_kubeconfig: Path) -> Kubectl:
    return Kubectl(admin_kubeconfig)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs and kubeconfigs; STATMUX_E2E_ARTIFACTS keeps them somewhere fixed (CI)."""
    given = os.environ.get("STATMUX_E2E_ARTIFACTS")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("statmux-e2e")


@pytest.fixture(scope="session")
def crd_existed(kubectl: Kubectl) -> bool:
    """Whether the ModelSet CRD was there before this session installed the chart."""
    return kubectl.get("crd", "modelsets.statmux.io") is not None


@pytest.fixture(scope="session")
def chart(admin_kubeconfig: Path, kubectl: Kubectl, crd_existed: bool) -> str:
    """The chart installed (operator replicas 0: no image can be pulled here)."""
    helm_install(admin_kubeconfig, "operator.replicas=0")
    if crd_existed:
        # Helm never upgrades CRDs; bring an older copy (from an earlier run) up to date.
        kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(CLUSTER_SCRIPTS.parent.parent / "charts/statmux/crds/modelset.yaml"),
        )
    kubectl("wait", "--for=condition=Established", "crd/modelsets.statmux.io", "--timeout=60s")
    return RELEASE


@pytest.fixture(scope="session")
def service_account(chart: str, kubectl: Kubectl) -> str:
    (dep,) = kubectl.items("deployment", RELEASE_NAMESPACE, f"app.kubernetes.io/instance={chart}")
    name: str = dep["spec"]["template"]["spec"]["serviceAccountName"]
    return name


@pytest.fixture(scope="session")
def operator_kubeconfig(kubectl: Kubectl, service_account: str, artifacts: Path) -> Path:
    return service_account_kubeconfig(
        kubectl, RELEASE_NAMESPACE, service_account, artifacts / "operator.kubeconfig"
    )


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: Path, artifacts: Path) -> Iterator[OperatorProcess]:
    # A stuck rollout (no free GPUs for old and new groups) retires old groups after 20 s.
    proc = OperatorProcess(
        operator_kubeconfig,
        artifacts / "operator.log",
        env={"STATMUX_ROLLOUT_TIMEOUT_SECONDS": "20"},
    )
    proc.start()
    proc.wait_healthy()
    yield proc
    proc.stop()
    print(f"\noperator log: {proc.log_path}")


@pytest.fixture(scope="session")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"statmux-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
