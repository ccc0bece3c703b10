"""Where the local control plane's binaries and state live (see e2e/cluster/lib.sh).

Shared by the chart tests, the e2e tests and benchmarks/operator.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = ROOT / "e2e" / "cluster"
CHART = ROOT / "charts" / "statmux"


def _module_version(go_mod: Path, module: str) -> str | None:
    if not go_mod.exists():
        return None
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    return m.group(1) if m else None


def kube_version() -> str:
    """The Kubernetes version the cluster scripts build (from their tools go.mod)."""
    v = _module_version(CLUSTER_SCRIPTS / "tools" / "go.mod", "k8s.io/kubernetes")
    return v or "v1.33.0"


def bin_dir() -> Path:
    given = os.environ.get("STATMUX_BIN_DIR")
    if given:
        return Path(given)
    cache = Path(os.environ.get("STATMUX_CACHE") or Path.home() / ".cache" / "statmux")
    return cache / "k8s-bin" / kube_version()


def cluster_dir() -> Path:
    return Path(os.environ.get("STATMUX_CLUSTER_DIR") or "/tmp/statmux-cluster")


def admin_kubeconfig() -> Path:
    return cluster_dir() / "admin.kubeconfig"


def binary(name: str) -> Path | None:
    """The cached binary, if build.sh made it (and it runs on this machine)."""
    path = bin_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def run(
    args: list[str | Path], check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        cmd = " ".join(str(a) for a in args)
        raise AssertionError(
            f"`{cmd}` failed ({proc.returncode}):\n{proc.stderr.strip()}\n{proc.stdout.strip()}"
        )
    return proc


def cluster_up(timeout: float = 3600) -> Path:
    """Start (or reuse) the local control plane with e2e/cluster/up.sh (idempotent, builds
    the binaries on first use). Returns the admin kubeconfig."""
    proc = subprocess.run(
        [str(CLUSTER_SCRIPTS / "up.sh")],
        stdout=subprocess.PIPE,
        stderr=None,  # up.sh prints its progress on stderr: let the user see it
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"e2e/cluster/up.sh failed ({proc.returncode}); see its output above")
    kubeconfig = admin_kubeconfig()
    if not kubeconfig.exists():
        raise RuntimeError(f"e2e/cluster/up.sh succeeded but {kubeconfig} does not exist")
    return kubeconfig
