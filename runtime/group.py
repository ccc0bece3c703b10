"""A serving group: pp x tp ranks over torch.distributed, and the leader's GroupEngine.

Every rank calls `start_group` with the Plan's group entry. It joins the process group
(NCCL on GPU, gloo on CPU), creates each stage's TP group and the last stage's return group,
builds its own shard of every hosted model and makes the first models resident. Rank 0 then
returns a `PipelineEngine` (runtime/engine.py's GroupEngine); every other rank runs the
worker loop (receive, compute, pass on) until the leader shuts the group down.

The leader runs three threads: the dispatcher (the only one that feeds the pipeline: stage
0's compute, swaps, keep-alive pings), the receiver (results from the last stage, on the
return group) and the heartbeat monitor. Several batches are in flight across the stages
at once; a dead rank fails every pending and later future with EngineError.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from statmux.placement.spec import WeightSource
from statmux.runtime.batching import Split, make_batch, model_info, output_name, split_output
from statmux.runtime.checkpoint import build_stage, load_state
from statmux.runtime.dist_env import DistInfo
from statmux.runtime.engine import EngineError, ModelInfo, Request, Response
from statmux.runtime.heartbeat import Heartbeat, HeartbeatMonitor
from statmux.runtime.metrics import StageSeconds
from statmux.runtime.pipeline import Links, Message, Op, Topology
from statmux.runtime.presets import ModelConfig, resolve_config
from statmux.runtime.stage_timing import StageClock, StageTimes
from statmux.runtime.swap import Residency, SwappableShard
from statmux.runtime.tensor_parallel import TPInfo

log = logging.getLogger(__name__)


class GroupSpecError(ValueError):
    """The Plan's group entry is unusable; the message names the field."""


class RendezvousError(RuntimeError):
    """This rank could not join its group (the leader's address, port or peers)."""


@dataclass
class HostedModel:
    index: int
    name: str
    arch: str
    cfg: ModelConfig
    info: ModelInfo
    shard: SwappableShard


@dataclass
class RankState:
    """What one rank holds: its place in the group, its channels and its model shards."""

    topo: Topology
    links: Links
    models: list[HostedModel]
    comm_device: torch.device
    clock: StageClock = field(default_factory=StageClock)


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


# ------------------------------------------------------------------------ one rank's work
def _agree(ok: bool, device: torch.device) -> bool:
    """All ranks: True when every rank's `ok` is True (a MIN all-reduce)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _swap_in_everywhere(state: RankState, index: int) -> bool:
    shard = state.models[index].shard
    try:
        shard.swap_in()
        ok = True
    except Exception:
        log.exception("rank %d: swapping in %s failed", state.topo.rank, state.models[index].name)
        shard.swap_out()
        ok = False
    return _agree(ok, state.comm_device)


def _step(state: RankState, msg: Message) -> Message:
    """Execute one message on this rank and pass it on; returns what was passed on.

    For LOAD the returned message's batch_id is 1 when every rank swapped the model in.
    """
    if msg.op == Op.RUN:
        shard = state.models[msg.model].shard
        if not shard.resident:
            raise RuntimeError(f"model {state.models[msg.model].name!r} is not resident")
        start = time.perf_counter_ns()
        inputs = [t.to(shard.device) for t in msg.tensors]
        result = shard.module(inputs)
        if shard.device.type == "cuda":  # the kernels are asynchronous: time their end
            torch.cuda.synchronize(shard.device)
        clock, topo = state.clock, state.topo
        clock.add(msg.model, time.perf_counter_ns() - start, msg.transfer_ns)
        timings = clock.stamp(msg.timings, topo.stage, topo.pp, msg.model)
        out = Message(Op.RUN, msg.batch_id, msg.model, result, timings)
        clock.add(msg.model, 0, state.links.forward(out), batches=0)
        return out
    state.links.forward(msg)  # first, so the next stages swap concurrently with this one
    if msg.op == Op.LOAD:
        return Message(Op.LOAD, int(_swap_in_everywhere(state, msg.model)), msg.model)
    if msg.op == Op.UNLOAD:
        state.models[msg.model].shard.swap_out()
    return msg


def _worker_loop(state: RankState) -> None:
    with torch.inference_mode():
        while True:
            msg = _step(state, state.links.receive_work())
            if msg.op == Op.SHUTDOWN:
                return


# ------------------------------------------------------------------------ the leader
@dataclass
class _Job:
    kind: str  # run | load | unload | ping | shutdown
    model: int = 0
    tensors: list[torch.Tensor] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    future: Future[Any] = field(default_factory=Future)


class PipelineEngine:
    """The leader's GroupEngine over the group's pipeline (see runtime/engine.py)."""

    def __init__(
        self,
        state: RankState,
        residency: Residency,
        keepalive_s: float,
        monitor: Any = None,
    ) -> None:
        self._state = state
        self._models = {m.name: m for m in state.models}
        self._residency = residency
        self._keepalive_s = keepalive_s
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._pending: dict[int, tuple[Future[list[Response]], list[Split], str]] = {}
        self._lock = threading.Lock()
        self._error: str | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self._monitor = monitor
        self._stage_times = StageTimes(state.topo.pp)  # stages 1.. as the results report them
        self._swaps: dict[str, tuple[int, float]] = {}  # model -> swap-ins, seconds
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="statmux-dispatch", daemon=True
        )
        self._receiver: threading.Thread | None = None
        if state.topo.pp > 1:
            self._receiver = threading.Thread(
                target=self._receive_loop, name="statmux-receive", daemon=True
            )
            self._receiver.start()
        self._dispatcher.start()

    # GroupEngine -------------------------------------------------------------------
    def model_infos(self) -> dict[str, ModelInfo]:
        return {name: m.info for name, m in self._models.items()}

    def submit(self, model: str, batch: list[Request]) -> Future[list[Response]]:
        future: Future[list[Response]] = Future()
        hosted = self._models.get(model)
        if hosted is None:
            future.set_exception(
                EngineError(
                    f"model {model!r} is not hosted by this group; hosted: "
                    f"{', '.join(self._models)}"
                )
            )
            return future
        try:
            tensors, splits = make_batch(hosted.cfg, batch)
        except EngineError as err:
            future.set_exception(err)
            return future
        self._put(_Job("run", hosted.index, tensors, splits, future))
        return future

    def load(self, model: str) -> float:
        job = _Job("load", self._index(model))
        self._put(job)
        return float(job.future.result())

    def unload(self, model: str) -> None:
        job = _Job("unload", self._index(model))
        self._put(job)
        job.future.result()

    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._residency.resident)

    def healthy(self) -> bool:
        return self._error is None

    def swap_totals(self) -> dict[str, tuple[int, float]]:
        """Per model: swap-ins so far and their seconds, on-demand ones included."""
        with self._lock:
            return dict(self._swaps)

    def stage_seconds(self) -> list[StageSeconds]:
        """Cumulative compute and transfer seconds per (model, stage), for /metrics.

        Stage 0 is the leader's own clock; the others are the totals carried back in the
        headers of the results (see runtime/stage_timing.py)."""
        names = {m.index: m.name for m in self._state.models}
        clock = self._state.clock
        out = []
        for index in sorted(clock.models()):
            compute, transfer, batches = clock.totals(index)
            out.append(StageSeconds(names[index], 0, compute / 1e9, transfer / 1e9, batches))
        for index, slots in sorted(self._stage_times.reported().items()):
            for stage, (compute, transfer, batches) in enumerate(slots[1:], start=1):
                out.append(
                    StageSeconds(names[index], stage, compute / 1e9, transfer / 1e9, batches)
                )
        return out

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._monitor is not None:
            self._monitor.stop()
        if self._error is None:
            job = _Job("shutdown")
            self._jobs.put(job)
            try:
                job.future.result(timeout=60)
                if self._receiver is not None:
                    self._receiver.join(timeout=60)
                dist.destroy_process_group()
            except Exception as err:
                log.warning("group shutdown was not clean: %s", err)
        self._fail("the group was shut down")

    # internals ---------------------------------------------------------------------
    def _index(self, model: str) -> int:
        if model not in self._models:
            raise EngineError(
                f"model {model!r} is not hosted by this group; hosted: {', '.join(self._models)}"
            )
        return self._models[model].index

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._error is not None or self._closed:
                job.future.set_exception(EngineError(self._error or "the group was shut down"))
                return
            self._jobs.put(job)

    def _fail(self, reason: str) -> None:
        """Mark the group unhealthy and fail every pending and queued future."""
        with self._lock:
            if self._error is None:
                self._error = reason
                if reason != "the group was shut down":
                    log.error("group failed: %s", reason)
            pending = list(self._pending.values())
            self._pending.clear()
            queued = []
            while True:
                try:
                    queued.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
        err = EngineError(self._error)
        for fut, _, _ in pending:
            if not fut.done():
                fut.set_exception(err)
        for job in queued:
            if not job.future.done():
                job.future.set_exception(err)

    def _issue(self, msg: Message) -> Message:
        """Hand a message to stage 0 (the leader and its TP peers) and run its part."""
        self._state.links.broadcast_input(msg)
        return _step(self._state, msg)

    def _ensure_resident(self, index: int) -> float:
        name = self._state.models[index].name
        with self._lock:
            victims = self._residency.plan_load(name)
        if name in self._residency.resident:
            self._residency.touch(name)
            return 0.0
        start = time.perf_counter()
        for victim in victims:
            self._issue(Message(Op.UNLOAD, 0, self._models[victim].index))
            with self._lock:
                self._residency.mark_unloaded(victim)
        ok = self._issue(Message(Op.LOAD, 0, index)).batch_id == 1
        if not ok:
            self._issue(Message(Op.UNLOAD, 0, index))  # leave every rank in the same state
            raise EngineError(f"model {name!r} failed to load on some rank (see the ranks' logs)")
        seconds = time.perf_counter() - start
        with self._lock:
            self._residency.mark_loaded(name)
            count, total = self._swaps.get(name, (0, 0.0))
            self._swaps[name] = (count + 1, total + seconds)
        return seconds

    def _dispatch_loop(self) -> None:
        with torch.inference_mode():
            while self._error is None:
                try:
                    job = self._jobs.get(timeout=self._keepalive_s)
                except queue.Empty:
                    job = _Job("ping")
                try:
                    if self._handle(job):
                        return
                except (EngineError, ValueError) as err:
                    job.future.set_exception(
                        err if isinstance(err, EngineError) else EngineError(str(err))
                    )
                except Exception as err:
                    self._fail(f"the pipeline failed on the leader: {err}")
                    if not job.future.done():
                        job.future.set_exception(EngineError(str(err)))
                    return

    def _handle(self, job: _Job) -> bool:
        """Run one job; True when the dispatcher should stop."""
        if job.kind == "run":
            self._ensure_resident(job.model)
            batch_id = next(self._ids)
            out_name = output_name(self._state.models[job.model].cfg)
            with self._lock:
                self._pending[batch_id] = (job.future, job.splits, out_name)
            out = self._issue(Message(Op.RUN, batch_id, job.model, job.tensors))
            if self._state.topo.pp == 1:
                self._resolve(out)
        elif job.kind == "load":
            job.future.set_result(self._ensure_resident(job.model))
        elif job.kind == "unload":
            name = self._state.models[job.model].name
            if name in self._residency.resident:
                self._issue(Message(Op.UNLOAD, 0, job.model))
                with self._lock:
                    self._residency.mark_unloaded(name)
            job.future.set_result(None)
        elif job.kind == "ping":
            self._issue(Message(Op.PING))
        elif job.kind == "shutdown":
            self._issue(Message(Op.SHUTDOWN))
            job.future.set_result(None)
            return True
        return False

    def _resolve(self, msg: Message) -> None:
        with self._lock:
            entry = self._pending.pop(msg.batch_id, None)
        if entry is None:
            return
        future, splits, name = entry
        try:
            future.set_result(split_output(name, msg.tensors[0], splits))
        except Exception as err:
            future.set_exception(EngineError(f"cannot split the output: {err}"))

    def _receive_loop(self) -> None:
        while True:
            try:
                msg = self._state.links.receive_result()
            except Exception as err:
                if not self._closed:
                    self._fail(f"lost the last pipeline stage: {err}")
                return
            if msg.op == Op.RUN:
                self._stage_times.update(msg.model, msg.timings)
                self._resolve(msg)
            elif msg.op == Op.SHUTDOWN:
                return


# ------------------------------------------------------------------------ start_group
def _new_group(ranks: list[int]) -> dist.ProcessGroup | None:
    """A subgroup (a collective call on every rank); None on ranks outside it."""
    group = dist.new_group(ranks)
    return group if isinstance(group, dist.ProcessGroup) else None


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

    where = f"{dist_info.master_addr}:{dist_info.master_port}"
    try:
        store = dist.TCPStore(
            dist_info.master_addr,
            dist_info.master_port,
            dist_info.world_size,
            is_master=dist_info.is_leader,
            # the rendezvous waits for pods that may start minutes apart
            timeout=timedelta(seconds=rendezvous_timeout_s),
            wait_for_workers=False,
        )
        dist.init_process_group(
            "nccl" if device == "cuda" else "gloo",
            store=store,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            timeout=timedelta(seconds=collective_timeout_s),
        )
    except (RuntimeError, OSError) as err:  # DistError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        role = "serve the rendezvous" if dist_info.is_leader else "reach the leader's rendezvous"
        raise RendezvousError(
            f"rank {dist_info.rank} of {dist_info.world_size} cannot {role} at {where} "
            f"(MASTER_ADDR/MASTER_PORT or LWS_LEADER_ADDRESS): {first}"
        ) from None
    topo = Topology(pp, tp, dist_info.rank)
    tp_group = None
    for s in range(pp):  # every rank creates every group, in the same order
        g = _new_group(topo.stage_ranks(s))
        if s == topo.stage:
            tp_group = g
    return_group = _new_group([0, topo.last_leader]) if pp > 1 else None
    links = Links(topo, compute, tp_group, return_group)
    tp_info = TPInfo(topo.tp_rank, tp, tp_group)

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
        dist.destroy_process_group()
        if error is not None:
            raise error
        raise EngineError("building the models failed on another rank of the group (see its log)")
    state = RankState(topo, links, models, compute)
    residency = Residency(
        {m.name: int(sizes[m.index + 1].item()) for m in models}, memory_budget_bytes
    )
    too_big = {n: b for n, b in residency.sizes.items() if b > (memory_budget_bytes or b)}
    if too_big:  # the same on every rank (the sizes were all-reduced): all stop alike
        dist.destroy_process_group()
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
                engine._fail(
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
        _worker_loop(state)
    finally:
        beat.stop()
    dist.destroy_process_group()
    return None
