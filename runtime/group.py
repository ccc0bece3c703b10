"""A serving group: pp x tp ranks over torch.distributed, each building its own shards.

Every rank calls `start_group` with the Plan's group entry. It joins the process group
(NCCL on GPU, gloo on CPU) and creates the subgroups (runtime/process_groups.py), builds its
own shard of every hosted model and makes the first models resident. Rank 0 then returns a
`PipelineEngine` (runtime/pipeline_engine.py, a GroupEngine); every other rank runs the
worker loop (receive, compute, pass on) until the leader shuts the group down.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist

from statmux.placement.plan import PlanGroup
from statmux.runtime.batching import max_sequence_length, model_info
from statmux.runtime.checkpoint import build_stage, load_state
from statmux.runtime.dist_env import DistInfo
from statmux.runtime.emulation import EmulationError, StageEmulator
from statmux.runtime.engine import EngineError
from statmux.runtime.heartbeat import Heartbeat, HeartbeatMonitor
from statmux.runtime.pipeline import Links, Topology
from statmux.runtime.pipeline_engine import HostedModel, PipelineEngine, RankState, worker_loop
from statmux.runtime.presets import resolve_config
from statmux.runtime.process_groups import (
    RendezvousError,
    create_subgroups,
    join_world,
    leave_world,
)
from statmux.runtime.swap import Residency, SwappableShard
from statmux.runtime.tensor_parallel import TPInfo

log = logging.getLogger(__name__)

__all__ = ["GroupSpecError", "PipelineEngine", "RendezvousError", "start_group"]


class GroupSpecError(ValueError):
    """The Plan's group entry is unusable; the message names the field."""


# ------------------------------------------------------------------------ start_group
def start_group(
    group: PlanGroup,
    dist_info: DistInfo,
    device: str = "cpu",
    *,
    memory_budget_bytes: int | None = None,
    seed: int = 0,
    collective_timeout_s: float = 600.0,
    rendezvous_timeout_s: float = 600.0,
    heartbeat_interval_s: float = 0.25,
    heartbeat_timeout_s: float = 3.0,
    emulate_device: bool = False,
) -> PipelineEngine | None:
    """Join the group and build this rank's shards; the leader gets the engine, others None.

    Non-leader ranks return only after the leader shuts the group down. `device` is "cpu"
    (gloo) or "cuda" (NCCL, one GPU per rank: cuda:<local_rank>). `memory_budget_bytes` is
    the per-device byte budget for resident weights (None: all models stay resident).
    `emulate_device`: each stage's forward takes the Plan's profiled time (emulation.py).
    """
    pp, tp, entries = group.pp, group.tp, group.models
    if dist_info.world_size != pp * tp:
        raise GroupSpecError(
            f"group {group.name!r} has pp={pp} x tp={tp} = {pp * tp} ranks but "
            f"the world size is {dist_info.world_size}"
        )
    if device not in ("cpu", "cuda"):
        raise GroupSpecError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and dist_info.local_rank >= torch.cuda.device_count():
        raise GroupSpecError(
            f"device 'cuda': this rank needs GPU {dist_info.local_rank} (LOCAL_RANK) but "
            f"{torch.cuda.device_count()} GPU(s) are visible"
        )
    if device == "cuda":
        torch.cuda.set_device(dist_info.local_rank)
        compute = torch.device("cuda", dist_info.local_rank)
    else:
        compute = torch.device("cpu")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise GroupSpecError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    emulator = None
    if emulate_device:  # checked before the rendezvous: every rank fails alike
        try:
            emulator = StageEmulator(
                Topology(pp, tp, dist_info.rank).stage,
                {i: (e.name, e.stage_latency_seconds) for i, e in enumerate(entries)},
            )
        except EmulationError as err:
            raise GroupSpecError(str(err)) from None

    me = f"rank {dist_info.rank}/{dist_info.world_size} of group {group.name!r}"
    started = time.monotonic()
    log.info(
        "%s: rendezvous at %s:%d (timeout %g s)",
        me,
        dist_info.master_addr,
        dist_info.master_port,
        rendezvous_timeout_s,
    )
    join_world(
        dist_info,
        "nccl" if device == "cuda" else "gloo",
        rendezvous_timeout_s=rendezvous_timeout_s,
        collective_timeout_s=collective_timeout_s,
    )
    groups = create_subgroups(Topology(pp, tp, dist_info.rank), rendezvous_timeout_s)
    log.info("%s: joined the group in %.2f s", me, time.monotonic() - started)
    topo = groups.topo
    links = Links(topo, compute, groups.tp_group, groups.return_group)
    tp_info = TPInfo(topo.tp_rank, tp, groups.tp_group)

    models: list[HostedModel] = []
    error: Exception | None = None
    for i, entry in enumerate(entries):
        phase = time.monotonic()
        try:
            cfg = resolve_config(entry.weights, f"model {entry.name!r}: weights")
            module = build_stage(cfg, topo.stage, pp, tp_info)
            shard = SwappableShard(module, load_state(module, entry.weights, seed), compute)
        except Exception as err:
            log.error("%s: model %s failed to build: %s", me, entry.name, err)
            error = err
            break
        log.info(
            "%s: model %s: stage %d weights loaded (%d bytes) in %.2f s",
            me,
            entry.name,
            topo.stage,
            shard.nbytes,
            time.monotonic() - phase,
        )
        info = model_info(
            entry.name,
            entry.weights.architecture,
            cfg,
            entry.max_batch_size,
            entry.slo_seconds,
            # admission predicts with the Plan's overheads, as the router and the simulator
            entry.served_stage_latency_seconds(),
            max_sequence_length(cfg, entry.weights.max_sequence_length),
            entry.request_overhead_seconds,
            entry.admission_seconds,
        )
        models.append(HostedModel(i, entry.name, entry.weights.architecture, cfg, info, shard))
    # every rank learns whether all built, and each model's largest shard (the budget unit)
    sizes = torch.zeros(len(entries) + 1, dtype=torch.int64, device=compute)
    sizes[0] = 0 if error is None else 1
    for m in models:
        sizes[m.index + 1] = m.shard.nbytes
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if error is not None or sizes[0].item():
        leave_world()
        if error is not None:
            raise error
        raise EngineError("building the models failed on another rank of the group (see its log)")
    state = RankState(topo, links, models, compute, emulator=emulator)
    residency = Residency(
        {m.name: int(sizes[m.index + 1].item()) for m in models}, memory_budget_bytes
    )
    too_big = {n: b for n, b in residency.sizes.items() if b > (memory_budget_bytes or b)}
    if too_big:  # the same on every rank (the sizes were all-reduced): all stop alike
        leave_world()
        raise GroupSpecError(
            "the memory budget "
            f"{memory_budget_bytes} bytes per device is smaller than the largest shard of "
            + ", ".join(f"model {n!r} ({b} bytes)" for n, b in too_big.items())
        )
    # the same deterministic choice on every rank: plan order, while it fits
    phase = time.monotonic()
    for m in models:
        if residency.budget is None or residency.used + residency.sizes[m.name] <= residency.budget:
            m.shard.swap_in()
            residency.mark_loaded(m.name)
    log.info(
        "%s: resident %s in %.2f s; ready %.2f s after start",
        me,
        ", ".join(residency.resident) or "none",
        time.monotonic() - phase,
        time.monotonic() - started,
    )

    keepalive = max(0.05, min(30.0, collective_timeout_s / 4))
    if dist_info.is_leader:
        engine: PipelineEngine | None = None

        def on_dead(rank: int) -> None:
            if engine is not None:
                engine.fail(
                    f"rank {rank} of the group stopped sending heartbeats "
                    f"for {heartbeat_timeout_s:g} s (it died or hung)"
                )

        monitor = None
        if dist_info.world_size > 1:
            monitor = HeartbeatMonitor(
                dist_info.master_addr,
                dist_info.master_port,
                dist_info.world_size,
                heartbeat_interval_s,
                heartbeat_timeout_s,
                on_dead,
            )
        engine = PipelineEngine(state, residency, keepalive, monitor)
        return engine
    beat = Heartbeat(
        dist_info.master_addr, dist_info.master_port, dist_info.rank, heartbeat_interval_s
    )
    try:
        worker_loop(state)
    finally:
        beat.stop()
    log.info("%s: the leader shut the group down; leaving", me)
    leave_world()
    return None
