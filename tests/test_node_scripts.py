"""The real node's scripts (e2e/cluster/node-*.sh, images.sh): they parse, and they agree with
the runtime on how the node tells it that its GPUs are stand-ins."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from statmux.contract import ENV_DEVICE

CLUSTER = Path(__file__).resolve().parents[1] / "e2e" / "cluster"
SCRIPTS = ["node-deps.sh", "node-up.sh", "node-down.sh", "images.sh", "build.sh", "down.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(CLUSTER / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_gpu_stand_in_tells_the_runtime_to_use_cpu() -> None:
    text = (CLUSTER / "node-up.sh").read_text()
    m = re.search(r'^DEVICE_ENV="([A-Z_]+)=(\w+)"', text, re.M)
    assert m is not None, "node-up.sh must define DEVICE_ENV=NAME=VALUE for the device plugin"
    assert m.group(1) == ENV_DEVICE and m.group(2) == "cpu"
    assert '--env="$DEVICE_ENV"' in text  # handed to the device plugin's Allocate answers


def test_node_binaries_are_built_only_on_request() -> None:
    # `build.sh` with no names (CI's control-plane cache) must not start the node's builds.
    text = (CLUSTER / "build.sh").read_text()
    m = re.search(r"^NODE_BINS=\(([^)]*)\)", text, re.M)
    assert m is not None
    assert set(m.group(1).split()) == {
        "kubelet",
        "kube-proxy",
        "statmux-gpu-stand-in",
        "statmux-egress-proxy",
        "pause",
        "coredns",
    }
    assert '! is_node_bin "$1"' in text
