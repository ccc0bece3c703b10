"""A serving group: pp x tp ranks over torch.distributed, each building its own shards.

Every rank calls `start_group` with the Plan's group entry. It joins the process group
(NCCL on GPU, gloo on CPU) and creates the subgroups (runtime/process_groups.py), builds its
own shard of every hosted model and makes the first models resident. Rank 0 then returns a
`PipelineEngine` (runtime/pipeline_engine.py, a GroupEngine); every other rank runs the
worker loop (receive, compute, pass on) until the leader shuts the group down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from statmux.placement.spec import WeightSource
from statmux.runtime.batching import model_info
from statmux.runtime.checkpoint import build_stage, load_state
from statmux.runtime.dist_env import DistInfo
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

__all__ = ["GroupSpecError", "PipelineEngine", "RendezvousError", "parse_group", "start_group"]


class GroupSpecError(ValueError):
    """The Plan's group entry is unusable; the message names the field."""


# ------------------------------------------------------------------------ the group entry
@dataclass
class ModelEntry:
    name: str
    weights: WeightSource
    slo_seconds: float | None
    stage_latency_s: dict[int, list[float]] = field(default_factory=dict)


def parse_group(group: Mapping[str, Any]) -> tuple[int, int, list[ModelEntry]]:
    """pp, tp and the hosted models of a Plan group entry, with errors naming the field."""
    gname = group.get("name", "?")
    where = f"group {gname!r}"
    sizes = []
    for key in ("pp", "tp"):
        value = group.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GroupSpecError(f"{where}: {key} must be a positive integer, got {value!r}")
        sizes.append(value)
    models = group.get("models")
    if not isinstance(models, list) or not models:
        raise GroupSpecError(f"{where}: models must be a non-empty list")
    entries = []
    for i, m in enumerate(models):
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str):
            raise GroupSpecError(f"{where}: models[{i}] needs a name")
        try:
            weights = WeightSource.model_validate(m.get("weights") or {})
        except ValueError as err:
            raise GroupSpecError(f"{where}: models[{i}].weights is invalid: {err}") from None
        slo = m.get("sloSeconds")
        lat = m.get("stageLatencySeconds") or {}
        try:
            stage_lat = {int(b): [float(x) for x in v] for b, v in lat.items()}
        except (TypeError, ValueError, AttributeError):
            raise GroupSpecError(
                f"{where}: models[{i}].stageLatencySeconds must map batch sizes to lists of seconds"
            ) from None
        entries.append(
            ModelEntry(m["name"], weights, None if slo is None else float(slo), stage_lat)
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise GroupSpecError(f"{where}: model names must be unique, got {names}")
    return sizes[0], sizes[1], entries


# ------------------------------------------------------------------------ start_group
def start_group(
    group: Mapping[str, Any],
    dist_info: DistInfo,
    device: str = "cpu",
    *,
    memory_budget_bytes: int | None = None,
    max_batch_size: int | None = None,
    seed: int = 0,
    collective_timeout_s: float = 600.0,
    rendezvous_timeout_s: float = 600.0,
    heartbeat_interval_s: float = 0.5,
    heartbeat_timeout_s: float = 10.0,
) -> PipelineEngine | None:
    """Join the group and build this rank's shards; the leader gets the engine, others None.

    Non-leader ranks return only after the leader shuts the group down. `device` is "cpu"
    (gloo) or "cuda" (NCCL, one GPU per rank: cuda:<local_rank>). `memory_budget_bytes` is
    the per-device byte budget for resident weights (None: all models stay resident).
    """
    pp, tp, entries = parse_group(group)
    if dist_info.world_size != pp * tp:
        raise GroupSpecError(
            f"group {group.get('name', '?')!r} has pp={pp} x tp={tp} = {pp * tp} ranks but "
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

    join_world(
        dist_info,
        "nccl" if device == "cuda" else "gloo",
        rendezvous_timeout_s=rendezvous_timeout_s,
        collective_timeout_s=collective_timeout_s,
    )
    groups = create_subgroups(Topology(pp, tp, dist_info.rank))
    topo = groups.topo
    links = Links(topo, compute, groups.tp_group, groups.return_group)
    tp_info = TPInfo(topo.tp_rank, tp, groups.tp_group)

    models: list[HostedModel] = []
    error: Exception | None = None
    for i, entry in enumerate(entries):
        try:
            cfg = resolve_config(entry.weights, f"model {entry.name!r}: weights")
            module = build_stage(cfg, topo.stage, pp, tp_info)
            shard = SwappableShard(module, load_state(module, entry.weights, seed), compute)
        except Exception as err:
            error = err
            break
        batch = max_batch_size or max(entry.stage_latency_s, default=1)
        info = model_info(
            entry.name,
            entry.weights.architecture,
            cfg,
            batch,
            entry.slo_seconds,
            entry.stage_latency_s,
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
    state = RankState(topo, links, models, compute)
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
    for m in models:
        if residency.budget is None or residency.used + residency.sizes[m.name] <= residency.budget:
            m.shard.swap_in()
            residency.mark_loaded(m.name)

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
    leave_world()
    return None
