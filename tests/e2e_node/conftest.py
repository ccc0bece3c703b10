"""Fixtures for the real-node lane (`make e2e-node`, marker e2e_node): its own local control
plane (STATMUX_NODE_CLUSTER_DIR, default /tmp/statmux-node-cluster; the kwok nodes tainted so
that every pod lands on the real node), the images built with buildah, and a real node
(e2e/cluster/node-up.sh). Everything is started idempotently and left up: `make e2e-node`
stops it with e2e/cluster/down.sh whatever the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from e2e_harness import Kubectl
from k8s_tools import CLUSTER_SCRIPTS

NODE_NAME = "statmux-node"


def node_cluster_dir() -> Path:
    return Path(os.environ.get("STATMUX_NODE_CLUSTER_DIR") or "/tmp/statmux-node-cluster")


def script_env() -> dict[str, str]:
    """The environment for e2e/cluster scripts: this lane's cluster, never the e2e lane's."""
    return os.environ | {
        "STATMUX_CLUSTER_DIR": str(node_cluster_dir()),
        "STATMUX_KWOK_TAINT": "1",
        "STATMUX_REAL_NODE": "1",  # the apiserver reaches the node's kubelet (logs, exec)
    }


def run_script(name: str, *args: str, timeout: float = 3600) -> str:
    proc = subprocess.run(
        [str(CLUSTER_SCRIPTS / name), *args],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=None,  # progress: let the user see it
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"e2e/cluster/{name} failed ({proc.returncode}); see its output above")
    return proc.stdout


@pytest.fixture(scope="session")
def node_kubeconfig() -> Path:
    run_script("up.sh")
    if os.environ.get("STATMUX_SKIP_IMAGES") != "1":  # 1: use the archives already built
        run_script("images.sh")
    run_script("node-up.sh")
    return node_cluster_dir() / "admin.kubeconfig"


@pytest.fixture(scope="session")
def node_kubectl(node_kubeconfig: Path) -> Kubectl:
    return Kubectl(node_kubeconfig)


@pytest.fixture(scope="session")
def node_pid(node_kubeconfig: Path) -> int:
    """The pid holding the node's network namespace (nsenter -t PID --net)."""
    return int((node_cluster_dir() / "node" / "pids" / "holder.pid").read_text())


@pytest.fixture(scope="session")
def node_script_env() -> dict[str, str]:
    """The environment for running this lane's e2e/cluster scripts from a test."""
    return script_env()
