"""Tensor parallelism against an independent oracle: DTensor's parallelize_module.

Two real gloo processes shard the same BERT with statmux's Megatron layers and with
torch.distributed.tensor.parallel's ColwiseParallel/RowwiseParallel; both must equal each
other and the single-process model within 1e-5 (fp32)."""

from __future__ import annotations

import json
import multiprocessing as mp
import runpy
import socket
from pathlib import Path

import pytest

RANK_SCRIPT = Path(__file__).with_name("tp_oracle_rank.py")
TOL = 1e-5
_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "numpy", "statmux.runtime.checkpoint"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_megatron_layers_match_dtensor_parallelize_module(tmp_path: Path) -> None:
    port = _free_port()
    procs = [
        _CTX.Process(
            target=runpy.run_path,
            args=(str(RANK_SCRIPT),),
            kwargs={
                "init_globals": {"RANK_ARGV": [str(r), str(port), str(tmp_path)]},
                "run_name": "__main__",
            },
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    if any(p.is_alive() for p in procs):
        for p in procs:
            p.kill()
        pytest.fail("the TP ranks hung")
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob("rank*.err")))
    assert not errors, errors
    result = json.loads((tmp_path / "result.json").read_text())
    # the oracle really is sharded: half of the query projection's rows on each rank
    assert result["oracle_is_dtensor"]
    assert result["oracle_local_rows"] == result["ours_local_rows"] == result["hidden"] // 2
    assert result["ours_vs_dtensor"] <= TOL, result
    assert result["ours_vs_single"] <= TOL, result
    assert result["dtensor_vs_single"] <= TOL, result
