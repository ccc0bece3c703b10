"""Group-side hardening: liveness (suspect, then dead), bounded subgroup rendezvous, one
resident copy per shard on CPU, and a sequence-length bound for every family."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from statmux.placement.spec import WeightSource
from statmux.runtime.batching import InputError, make_batch, max_sequence_length, model_info
from statmux.runtime.checkpoint import build_stage, load_state
from statmux.runtime.heartbeat import Heartbeat, HeartbeatMonitor
from statmux.runtime.presets import ModelConfigError, resolve_config
from statmux.runtime.swap import SwappableShard

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "statmux.runtime.process_groups"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _weights(arch: str, **extra: Any) -> WeightSource:
    return WeightSource.model_validate(
        {"source": "synthetic", "architecture": arch, "preset": "tiny", "dtype": "float32"} | extra
    )


# --------------------------------------------------------------------------- memory
def test_a_resident_cpu_shard_shares_its_host_memory() -> None:
    ws = _weights("bert")
    cfg = resolve_config(ws)
    module = build_stage(cfg, 0, 1)
    shard = SwappableShard(module, load_state(module, ws, 0), torch.device("cpu"))
    shard.swap_in()
    host = {t.data_ptr() for t in shard.host.values()}
    resident = {p.data_ptr() for p in module.parameters()}
    assert resident <= host  # no second copy of any weight
    shard.swap_out()
    assert all(p.is_meta for p in module.parameters())
    shard.swap_in()
    assert {p.data_ptr() for p in module.parameters()} <= host


# --------------------------------------------------------------------------- bounded cost
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_every_family_has_a_sequence_limit(arch: str) -> None:
    cfg = resolve_config(_weights(arch))
    limit = max_sequence_length(cfg)
    info = model_info("m", arch, cfg, 1, None, None, limit)
    assert info.max_sequence_length == limit and limit >= 1
    with pytest.raises(InputError, match=f"exceeds the model's {limit} positions"):
        make_batch(cfg, [{"input_ids": np.zeros((1, limit + 1), np.int64)}], limit)
    assert max_sequence_length(cfg, 16) == 16
    with pytest.raises(ModelConfigError, match=f"maxSequenceLength {limit + 1} is more"):
        max_sequence_length(cfg, limit + 1)


def test_the_modelset_carries_an_explicit_limit() -> None:
    ws = _weights("llama", maxSequenceLength=32)
    assert ws.max_sequence_length == 32
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _weights("llama", maxSequenceLength=0)


# --------------------------------------------------------------------------- liveness
def test_a_silent_rank_is_suspect_before_it_is_declared_dead() -> None:
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    dead: list[tuple[int, float]] = []
    beat = Heartbeat("127.0.0.1", port, 1, 0.05, on_lost=lambda: None)
    monitor = HeartbeatMonitor(
        "127.0.0.1", port, 2, 0.05, 1.5, lambda r: dead.append((r, time.monotonic()))
    )
    try:
        time.sleep(0.4)
        assert monitor.suspect == frozenset() and not dead
        beat.stop()  # the rank hangs (SIGSTOP) or dies
        stopped = time.monotonic()
        while not monitor.suspect and time.monotonic() - stopped < 10:
            time.sleep(0.02)
        assert monitor.suspect == frozenset({1})
        assert not dead  # suspect first: not ready, not yet failed
        while not dead and time.monotonic() - stopped < 10:
            time.sleep(0.02)
        assert dead and dead[0][0] == 1
    finally:
        monitor.stop()
        beat.stop()
        del store


def _rank(rank: int, port: int, out: Any) -> None:
    from statmux.runtime.dist_env import DistInfo
    from statmux.runtime.pipeline import Topology
    from statmux.runtime.process_groups import RendezvousError, create_subgroups, join_world

    join_world(
        DistInfo(rank, 2, "127.0.0.1", port),
        "gloo",
        rendezvous_timeout_s=30,
        collective_timeout_s=30,
    )
    if rank == 1:  # a stale peer: in the world, never creating the subgroups
        time.sleep(20)
        return
    start = time.monotonic()
    try:
        create_subgroups(Topology(2, 1, 0), timeout_s=2.0)
        out.put("created")
    except RendezvousError as err:
        out.put(f"{time.monotonic() - start:.1f} {err}")


def test_subgroup_creation_honours_the_rendezvous_timeout() -> None:
    port = _free_port()
    out = _CTX.Queue()
    procs = [_CTX.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        result = out.get(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.join()
    seconds, _, message = result.partition(" ")
    assert "--rendezvous-timeout" in message, result
    assert float(seconds) < 20  # gave up on its own, long before the peer would answer


def test_heartbeat_timeout_is_at_most_three_seconds_by_default() -> None:
    import inspect

    from statmux.runtime.group import start_group
    from statmux.runtime.main import build_parser

    assert inspect.signature(start_group).parameters["heartbeat_timeout_s"].default <= 3
    args = build_parser().parse_args(["--plan", "p", "--group", "g"])
    assert args.heartbeat_timeout <= 3
    assert timedelta(seconds=args.rendezvous_timeout) > timedelta(0)
