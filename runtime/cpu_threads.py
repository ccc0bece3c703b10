"""How many intra-op threads a rank uses: its share of the CPUs it may run on.

torch sizes its intra-op pool by the machine's cores, not by the CPUs the process may use.
In a container with a CPU limit, or with several ranks on one machine, the threads then
outnumber the CPUs: they spin and preempt each other, and a rank's CPU time per request
grows many times over (benchmarks/README.md, "per-request CPU of a group"). Unless
OMP_NUM_THREADS or --intra-op-threads says otherwise, a rank uses the CPUs of its affinity
mask, capped by its cgroup's CPU quota, divided by the ranks that share them
(NPROC_PER_NODE: the ranks the launcher starts in one pod).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from statmux.contract import ENV_NPROC_PER_NODE

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's cgroup in CPUs (v2 `cpu.max`, or v1's
    `cpu.cfs_quota_us` over `cpu.cfs_period_us`); None when unlimited or unknown."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process may use (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def intra_op_threads(
    explicit: int | None, env: Mapping[str, str], root: Path = CGROUP_ROOT
) -> int | None:
    """The intra-op thread count to set, or None to leave torch's (OMP_NUM_THREADS set)."""
    if explicit is not None:
        return explicit
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    try:
        sharing = max(1, int(env.get(ENV_NPROC_PER_NODE, "1").strip() or 1))
    except ValueError:
        sharing = 1
    return max(1, available_cpus(root) // sharing)


def apply_intra_op_threads(
    explicit: int | None, env: Mapping[str, str], root: Path = CGROUP_ROOT
) -> int | None:
    """Set torch's intra-op threads as `intra_op_threads` says; returns what was set."""
    threads = intra_op_threads(explicit, env, root)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads
