"""The group's pipeline at run time: the leader's PipelineEngine and the workers' loop.

Both sides execute the same messages (runtime/pipeline.py's wire format) with `step`: a
worker receives a message, runs its part and passes it on until SHUTDOWN; the leader's
engine turns GroupEngine calls into messages for stage 0 and reads results back.

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
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from statmux.runtime.batching import Split, make_batch, output_name, split_output
from statmux.runtime.emulation import StageEmulator
from statmux.runtime.engine import EngineError, GroupEngine, ModelInfo, Request, Response
from statmux.runtime.heartbeat import HeartbeatMonitor
from statmux.runtime.metrics import StageSeconds
from statmux.runtime.pipeline import Links, Message, Op, Topology
from statmux.runtime.presets import ModelConfig
from statmux.runtime.process_groups import all_agree, leave_world
from statmux.runtime.stage_timing import StageClock, StageTimes
from statmux.runtime.swap import Residency, SwappableShard

log = logging.getLogger(__name__)


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
    emulator: StageEmulator | None = None  # --emulate-device: stages take profiled time


# ------------------------------------------------------------------------ one rank's work
def _swap_in_everywhere(state: RankState, index: int) -> bool:
    shard = state.models[index].shard
    try:
        shard.swap_in()
        ok = True
    except Exception:
        log.exception("rank %d: swapping in %s failed", state.topo.rank, state.models[index].name)
        shard.swap_out()
        ok = False
    return all_agree(ok, state.comm_device)


def step(state: RankState, msg: Message) -> Message:
    """Execute one message on this rank and pass it on; returns what was passed on.

    For LOAD the returned message's batch_id is 1 when every rank swapped the model in.
    """
    if msg.op == Op.RUN:
        shard = state.models[msg.model].shard
        if not shard.resident:
            raise RuntimeError(f"model {state.models[msg.model].name!r} is not resident")
        start = time.perf_counter_ns()
        inputs = [t.to(shard.device) for t in msg.tensors]
        if state.emulator is not None:
            result = state.emulator.forward(msg.model, inputs, shard.module)
            rows = int(msg.tensors[0].shape[0]) if msg.tensors else 1
            state.emulator.hold(msg.model, rows, start)
        else:
            result = shard.module(inputs)
            if shard.device.type == "cuda":  # the kernels are asynchronous: time their end
                torch.cuda.synchronize(shard.device)
        clock, topo = state.clock, state.topo
        clock.add(msg.model, time.perf_counter_ns() - start, msg.transfer_ns)
        timings = clock.stamp(msg.timings, topo.stage, topo.pp, msg.model)
        out = Message(Op.RUN, msg.batch_id, msg.model, result, timings)
        model = msg.model
        state.links.forward(out, lambda ns: clock.add(model, 0, ns, batches=0))
        return out
    state.links.forward(msg)  # first, so the next stages swap concurrently with this one
    if msg.op == Op.LOAD:
        return Message(Op.LOAD, int(_swap_in_everywhere(state, msg.model)), msg.model)
    if msg.op == Op.UNLOAD:
        state.models[msg.model].shard.swap_out()
    return msg


def worker_loop(state: RankState) -> None:
    """A worker rank: receive, compute, pass on, until the leader shuts the group down."""
    with torch.inference_mode():
        while True:
            msg = step(state, state.links.receive_work())
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


class PipelineEngine(GroupEngine):
    """The leader's GroupEngine over the group's pipeline (see runtime/engine.py)."""

    def __init__(
        self,
        state: RankState,
        residency: Residency,
        keepalive_s: float,
        monitor: HeartbeatMonitor | None = None,
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
            tensors, splits = make_batch(hosted.cfg, batch, hosted.info.max_sequence_length)
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

    def ready(self) -> bool:
        return self._error is None and not (self._monitor and self._monitor.suspect)

    @property
    def failure(self) -> str | None:
        return self._error

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
                leave_world()
            except Exception as err:
                log.warning("group shutdown was not clean: %s", err)
        self.fail("the group was shut down")

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

    def fail(self, reason: str) -> None:
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
        return step(self._state, msg)

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
                    self.fail(f"the pipeline failed on the leader: {err}")
                    if not job.future.done():
                        job.future.set_exception(EngineError(str(err)))
                    return

    def _handle(self, job: _Job) -> bool:
        """Run one job; True when the dispatcher should stop."""
        if job.kind == "run":
            if not job.future.set_running_or_notify_cancel():
                return False  # withdrawn by the scheduler before it started: skip it
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
                    self.fail(f"lost the last pipeline stage: {err}")
                return
            if msg.op == Op.RUN:
                self._stage_times.update(msg.model, msg.timings)
                self._resolve(msg)
            elif msg.op == Op.SHUTDOWN:
                return
