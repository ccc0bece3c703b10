"""Stage-to-stage messages: a small int64 header, then the tensors it describes.

Every message travels as one header tensor (op, batch id, model index, and for each tensor its
dtype code, ndim and shape) followed by its tensors, so the receiver allocates exactly the
right buffers for any batch size and sequence length (torch.distributed.pipelining fixes
its buffers at the first step and cannot serve variable shapes). Control messages (load,
unload, ping, shutdown) ride the same path, so every rank sees one ordered stream of work.

Rank layout: rank = stage * tp + tp_rank. TP rank r of stage s receives from rank r of
stage s-1 (whose output is replicated after the row-parallel all-reduce) and sends to rank
r of stage s+1; the stage-0 peers of the leader get the input by a broadcast over their TP
group. The last stage's TP rank 0 returns results to the leader over a dedicated two-rank
process group that the leader reads on its own thread: the forward path never waits on the
return path, so sends never block in a cycle however many batches are in flight.

Sends of RUN messages are asynchronous on CPU (gloo): a gloo send blocks until the receiver
has posted its receive, so a stage that finished a batch would otherwise wait for the next
stage to finish its own batch before taking the next one (no buffer between stages, a
bubble per batch whenever the next stage is busy). Each rank therefore hands RUN messages
to one sender thread (FIFO, so the order on the wire is the order of the work) and goes on;
control messages (load, unload, ping, shutdown) first wait for that queue to drain and are
sent inline, as before. With NCCL a send is already asynchronous to the CPU (it is enqueued
on a stream), and NCCL communicators are not shared between threads: the sends stay inline.

Stage timings ride the same headers: after the tensor specs, each header has one
(compute ns, transfer ns, batches) slot per stage. A stage writes its own cumulative totals
for the message's model into its slot before passing a RUN message on, so the leader reads
every stage's totals off the results it receives anyway (no extra message; the totals lag by
the stage's send of the batch in hand, which is counted with its next batch).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class Op(IntEnum):
    RUN = 1  # run the batch through model `model`
    LOAD = 2  # swap model `model` in (then all ranks all-reduce an ok flag)
    UNLOAD = 3  # drop model `model`'s device copy
    PING = 4  # keep-alive: idle receives must not hit the process-group timeout
    SHUTDOWN = 5


# what the last stage hands back to the leader (loads are acknowledged by an all-reduce)
_RETURNED = (Op.RUN, Op.PING, Op.SHUTDOWN)

MAX_TENSORS = 4
MAX_NDIM = 4
_FIXED = 4  # op, batch id, model, tensor count
_SPEC = 2 + MAX_NDIM  # dtype code, ndim, shape
HEADER_LEN = _FIXED + MAX_TENSORS * _SPEC  # without stage timings
TIMING_FIELDS = 3  # per stage: compute ns, transfer ns, batches (cumulative, per model)


def header_len(stages: int) -> int:
    """Length of a header that carries timing slots for `stages` pipeline stages."""
    return HEADER_LEN + TIMING_FIELDS * stages


DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int64: 3,
    torch.int32: 4,
    torch.bool: 5,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass
class Message:
    op: Op
    batch_id: int = 0
    model: int = 0
    tensors: list[torch.Tensor] = field(default_factory=list)
    # per stage (compute ns, transfer ns, batches), flattened; empty: all zero
    timings: list[int] = field(default_factory=list)
    # set on receipt: ns this rank spent receiving the tensors (after the header arrived)
    transfer_ns: int = 0


def pack_header(msg: Message, stages: int = 0) -> torch.Tensor:
    """The int64 header of `msg`, with timing slots for `stages` stages."""
    if len(msg.tensors) > MAX_TENSORS:
        raise ValueError(f"a message carries at most {MAX_TENSORS} tensors")
    if len(msg.timings) > TIMING_FIELDS * stages:
        raise ValueError(f"the message has timings for more than {stages} stages")
    # one list, one tensor: per-element tensor writes cost a dispatch each
    h = [0] * header_len(stages)
    h[:_FIXED] = [int(msg.op), msg.batch_id, msg.model, len(msg.tensors)]
    for i, t in enumerate(msg.tensors):
        if t.dim() > MAX_NDIM:
            raise ValueError(f"tensors have at most {MAX_NDIM} dimensions, got {t.dim()}")
        base = _FIXED + i * _SPEC
        h[base] = DTYPE_CODES[t.dtype]
        h[base + 1] = t.dim()
        h[base + 2 : base + 2 + t.dim()] = t.shape
    h[HEADER_LEN : HEADER_LEN + len(msg.timings)] = msg.timings
    return torch.tensor(h, dtype=torch.int64)


def unpack_header(header: torch.Tensor) -> tuple[Message, list[tuple[torch.dtype, list[int]]]]:
    h = header.tolist()
    specs = []
    for i in range(h[3]):
        base = _FIXED + i * _SPEC
        specs.append((CODE_DTYPES[h[base]], h[base + 2 : base + 2 + h[base + 1]]))
    return Message(Op(h[0]), h[1], h[2], timings=h[HEADER_LEN:]), specs


@dataclass(frozen=True)
class Topology:
    pp: int
    tp: int
    rank: int

    @property
    def stage(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.pp - 1

    @property
    def prev_rank(self) -> int:
        return self.rank - self.tp

    @property
    def next_rank(self) -> int:
        return self.rank + self.tp

    @property
    def last_leader(self) -> int:
        """The rank that returns results to the leader: TP rank 0 of the last stage."""
        return (self.pp - 1) * self.tp

    def stage_ranks(self, stage: int) -> list[int]:
        return [stage * self.tp + r for r in range(self.tp)]


Sent = Callable[[int], None]  # told the ns a send took


class SendError(RuntimeError):
    """An earlier asynchronous send of this rank failed (the next stage is gone)."""


class _Sender:
    """One thread that sends this rank's queued messages in order (see the module doc)."""

    def __init__(self, send: Callable[[Message, int, dist.ProcessGroup | None], int]) -> None:
        self._send = send
        self._queue: queue.Queue[tuple[Message, int, dist.ProcessGroup | None, Sent | None]] = (
            queue.Queue()
        )
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="statmux-send", daemon=True)
        self._thread.start()

    def put(
        self, msg: Message, dst: int, group: dist.ProcessGroup | None, done: Sent | None
    ) -> None:
        self.check()
        self._queue.put((msg, dst, group, done))

    def check(self) -> None:
        if self.error is not None:
            raise SendError(f"a send to the next stage failed: {self.error}") from self.error

    def flush(self) -> None:
        """Wait until every queued message is on the wire (or a send failed)."""
        self._queue.join()
        self.check()

    def _run(self) -> None:
        while True:
            msg, dst, group, done = self._queue.get()
            try:
                if self.error is None:  # after a failure the rest is dropped, never sent
                    ns = self._send(msg, dst, group)
                    if done is not None:
                        done(ns)
            except Exception as err:
                log.error(
                    "rank sender: sending batch %d to rank %d failed: %s", msg.batch_id, dst, err
                )
                self.error = err
            finally:
                self._queue.task_done()


class Links:
    """This rank's message channels. `device` is where tensors travel (cuda for NCCL).

    `async_send` (default: on CPU): RUN messages go out on a sender thread (module doc)."""

    def __init__(
        self,
        topo: Topology,
        device: torch.device,
        tp_group: dist.ProcessGroup | None,
        return_group: dist.ProcessGroup | None,
        async_send: bool | None = None,
    ) -> None:
        self.topo = topo
        self.device = device
        self.tp_group = tp_group
        self.return_group = return_group
        if async_send is None:
            async_send = device.type == "cpu"
        self._sender: _Sender | None = None
        if async_send and (not topo.is_last or (topo.tp_rank == 0 and topo.pp > 1)):
            self._sender = _Sender(self.send)

    # point to point -------------------------------------------------------------------
    def send(self, msg: Message, dst: int, group: dist.ProcessGroup | None = None) -> int:
        """Send `msg`; returns the ns it took (a blocking send also waits for the receiver)."""
        start = time.perf_counter_ns()
        dist.send(pack_header(msg, self.topo.pp).to(self.device), dst, group=group)
        for t in msg.tensors:
            dist.send(t.to(self.device).contiguous(), dst, group=group)
        return time.perf_counter_ns() - start

    def recv(self, src: int, group: dist.ProcessGroup | None = None) -> Message:
        header = torch.empty(header_len(self.topo.pp), dtype=torch.int64, device=self.device)
        dist.recv(header, src, group=group)
        # waiting for the header is idle time; the tensors that follow are the transfer
        start = time.perf_counter_ns()
        msg, specs = unpack_header(header)
        for dtype, shape in specs:
            t = torch.empty(shape, dtype=dtype, device=self.device)
            dist.recv(t, src, group=group)
            msg.tensors.append(t)
        msg.transfer_ns = time.perf_counter_ns() - start
        return msg

    # the pipeline's paths ------------------------------------------------------------
    def broadcast_input(self, msg: Message | None) -> Message:
        """Stage 0: the leader (msg given) hands the same message to its TP peers."""
        src = 0
        size = header_len(self.topo.pp)
        if msg is not None:
            if self.topo.tp > 1:
                start = time.perf_counter_ns()
                header = pack_header(msg, self.topo.pp).to(self.device)
                dist.broadcast(header, src, group=self.tp_group)
                for t in msg.tensors:
                    dist.broadcast(t.to(self.device).contiguous(), src, group=self.tp_group)
                msg.transfer_ns = time.perf_counter_ns() - start
            return msg
        header = torch.empty(size, dtype=torch.int64, device=self.device)
        dist.broadcast(header, src, group=self.tp_group)
        start = time.perf_counter_ns()
        got, specs = unpack_header(header)
        for dtype, shape in specs:
            t = torch.empty(shape, dtype=dtype, device=self.device)
            dist.broadcast(t, src, group=self.tp_group)
            got.tensors.append(t)
        got.transfer_ns = time.perf_counter_ns() - start
        return got

    def receive_work(self) -> Message:
        """A worker's next message, from the previous stage (or the leader's broadcast)."""
        if self.topo.is_first:
            return self.broadcast_input(None)
        return self.recv(self.topo.prev_rank)

    def forward(self, msg: Message, sent: Sent | None = None) -> int:
        """Pass a message on to the next stage, or back to the leader from the last one.

        Returns the ns spent sending (0 when nothing was sent or the send was queued);
        `sent`, when given, is told the ns of a send (on the sender thread if queued).
        Raises SendError when an earlier queued send failed."""
        if not self.topo.is_last:
            dst, group = self.topo.next_rank, None
        elif self.topo.tp_rank == 0 and self.topo.pp > 1 and msg.op in _RETURNED:
            dst, group = 0, self.return_group
        else:
            return 0
        if self._sender is not None:
            if msg.op == Op.RUN:
                self._sender.put(msg, dst, group, sent)
                return 0
            self._sender.flush()  # control messages keep their place behind the work
        ns = self.send(msg, dst, group=group)
        if sent is not None:
            sent(ns)
        return ns

    def flush(self) -> None:
        """Wait until every queued send is done (raises SendError if one failed)."""
        if self._sender is not None:
            self._sender.flush()

    def receive_result(self) -> Message:
        """Leader: the next message the last stage returned."""
        return self.recv(self.topo.last_leader, group=self.return_group)
