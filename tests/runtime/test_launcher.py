"""The per-pod launcher: one `statmux runtime` process per local rank, gang exit."""

from __future__ import annotations

import sys
import time

import pytest

from statmux.runtime.launcher import child_env, launch, ranks_to_launch


def test_ranks_to_launch_reads_the_operator_env():
    assert ranks_to_launch({}) == 0
    assert ranks_to_launch({"RANK": "3", "NPROC_PER_NODE": "4"}) == 0
    assert ranks_to_launch({"NPROC_PER_NODE": "4"}) == 4
    with pytest.raises(ValueError, match="NPROC_PER_NODE"):
        ranks_to_launch({"NPROC_PER_NODE": "four"})


def test_child_env_computes_global_rank():
    env = child_env({"NODE_RANK": "2", "MASTER_ADDR": "x"}, 1, 4)
    assert env["RANK"] == "9" and env["LOCAL_RANK"] == "1" and env["MASTER_ADDR"] == "x"


def test_a_failing_rank_stops_the_others():
    """Rank 1 exits with 3 at once; rank 0 would sleep for a minute. The launcher stops
    rank 0 and reports 3: the pod fails as a whole and Kubernetes restarts it."""
    script = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)\n"
    start = time.monotonic()
    code = launch([], 2, env={"NODE_RANK": "0"}, command=[sys.executable, "-c", script])
    assert code == 3
    assert time.monotonic() - start < 30


def test_all_ranks_finishing_cleanly_is_success():
    script = "import os, sys; sys.exit(0 if os.environ['LOCAL_RANK'] in '012' else 1)"
    assert launch([], 3, env={"NODE_RANK": "1"}, command=[sys.executable, "-c", script]) == 0
