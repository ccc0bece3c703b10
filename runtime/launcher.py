"""One pod, several ranks: start a `statmux runtime` process per local GPU (like torchrun).

The operator gives every pod NODE_RANK and NPROC_PER_NODE (and RANK only when a pod runs a
single rank). When a pod holds several ranks, this launcher starts one child per local rank
with RANK = NODE_RANK * NPROC_PER_NODE + i and LOCAL_RANK = i. If any child exits, the others
are stopped, so the group fails as a whole (gang semantics) and Kubernetes restarts the pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from statmux.contract import ENV_LOCAL_RANK, ENV_NODE_RANK, ENV_NPROC_PER_NODE, ENV_RANK


def ranks_to_launch(env: Mapping[str, str]) -> int:
    """How many local ranks this process must start (0: run the single rank in-process)."""
    if env.get(ENV_RANK):
        return 0
    raw = env.get(ENV_NPROC_PER_NODE, "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {ENV_NPROC_PER_NODE}={raw!r} is not an integer"
        ) from None
    if n < 1:
        raise ValueError(f"environment variable {ENV_NPROC_PER_NODE}={n} must be at least 1")
    return n


def child_env(env: Mapping[str, str], local_rank: int, nproc: int) -> dict[str, str]:
    raw = env.get(ENV_NODE_RANK, "0").strip() or "0"
    try:
        node_rank = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {ENV_NODE_RANK}={raw!r} is not an integer"
        ) from None
    out = dict(env)
    out[ENV_RANK] = str(node_rank * nproc + local_rank)
    out[ENV_LOCAL_RANK] = str(local_rank)
    return out


def launch(
    argv: Sequence[str],
    nproc: int,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> int:
    """Run `statmux runtime ARGV` (or `command`) once per local rank; return the first
    non-zero exit code."""
    base = dict(os.environ if env is None else env)
    cmd = (
        list(command)
        if command is not None
        else [sys.executable, "-m", "statmux", "runtime", *argv]
    )
    children = [subprocess.Popen(cmd, env=child_env(base, i, nproc)) for i in range(nproc)]

    def stop_all(signum: int = signal.SIGTERM) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, lambda s, _f: stop_all(s))
    first_failure = 0
    try:
        while True:
            codes = [c.poll() for c in children]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                first_failure = failed[0] or 1
                break
            if all(c is not None for c in codes):
                break
            time.sleep(0.2)
        stop_all()
        deadline = time.monotonic() + 30
        for c in children:
            try:
                c.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        return first_failure
    finally:
        signal.signal(signal.SIGTERM, previous)
