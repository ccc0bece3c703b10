"""A rank's intra-op threads follow the CPUs it may use (affinity, cgroup limit, pod ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from statmux.runtime.cpu_threads import available_cpus, cgroup_cpu_quota, intra_op_threads

CPUS = len(os.sched_getaffinity(0))


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def test_the_cgroup_cpu_limit_is_read_in_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cgroup_cpu_quota(cgroup_v2(tmp_path / "b", "max 100000")) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(v1) is None
    assert cgroup_cpu_quota(tmp_path / "none") is None


def test_threads_are_the_pods_cpus_over_its_ranks(tmp_path: Path) -> None:
    one_cpu = cgroup_v2(tmp_path / "a", "100000 100000")
    unlimited = cgroup_v2(tmp_path / "b", "max 100000")
    assert available_cpus(one_cpu) == 1
    assert available_cpus(unlimited) == CPUS
    assert intra_op_threads(None, {}, one_cpu) == 1
    assert intra_op_threads(None, {}, unlimited) == CPUS
    assert intra_op_threads(None, {"NPROC_PER_NODE": str(CPUS)}, unlimited) == 1
    # a fraction of a CPU still gets one thread
    assert intra_op_threads(None, {}, cgroup_v2(tmp_path / "c", "50000 100000")) == 1
    # what the user says wins
    assert intra_op_threads(None, {"OMP_NUM_THREADS": "3"}, one_cpu) is None
    assert intra_op_threads(5, {"OMP_NUM_THREADS": "3"}, one_cpu) == 5


def test_the_runtime_sets_torchs_threads(tmp_path: Path) -> None:
    """In a fresh interpreter (torch's pool is per process): a 1-CPU cgroup gives torch 1
    intra-op thread, where torch alone would take every core of the machine."""
    root = cgroup_v2(tmp_path, "100000 100000")
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from statmux.runtime.cpu_threads import apply_intra_op_threads\n"
        "assert apply_intra_op_threads(None, {}, Path(sys.argv[1])) == 1\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
