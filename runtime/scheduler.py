"""Queues, SLO-aware admission, EDF dispatch and dynamic batching for one group.

Everything here runs on the front end's event loop (single-threaded, no locks); the engine's
futures complete on its own threads and hop back with one `call_soon_threadsafe` per batch.
A batch the engine ran inline (already done when `submit` returns) is finished on the spot,
so its handlers' awaits return without an event-loop iteration.

- One FIFO queue per model; every request of a model has the same SLO, so each queue is
  also ordered by deadline (deadline = arrival + slo_seconds - the Plan's per-request
  overhead, which is spent outside the pipeline, as the simulator has it; no SLO: no
  deadline).
- Dispatch: while fewer than `max_in_flight` (the pipeline depth pp) batches are running,
  pick the model whose head request has the earliest deadline (EDF across models) and take
  up to its max_batch_size rows that can all still finish by the tightest deadline among them.
  A request that cannot make its deadline even alone is dropped (reason "deadline").
- Admission: at arrival, simulate EDF batching over the batches running, every queued
  request and the newcomer, with the model's profile; reject the newcomer (reason
  "admission") if it would finish past its deadline, or if by overtaking it would make an
  admitted request late. A pipeline takes the sum of the stages for the first batch and
  the bottleneck stage for every further one. Requests without an SLO are never rejected.
- Learning: each batch that ran alone measures observed / profiled latency (`Drift`); once
  that leaves a band around 1, the profile is scaled by it everywhere above.
- Cost: a request's `rows` are batch units (oip_codec.request_units), so a long sequence
  costs what it will take.
- Accounting: from `submit` on, every request's outcome is counted here exactly once
  (a refusal at submit, success, rejection, cancellation, failure).
- Failures: if the group is unhealthy every queued and running request fails (Unavailable);
  if a batch of several requests fails on a healthy group, each request is retried alone so
  one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from statmux.runtime.engine import EngineError, GroupEngine, ModelInfo, Request, Response
from statmux.runtime.metrics import ModelStats
from statmux.runtime.serving_errors import (
    Cancelled,
    EngineFailed,
    InvalidRequest,
    ModelNotFound,
    Rejected,
    ServingError,
    Unavailable,
    admission_limit_text,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# An engine's optional fast path: run a small batch now, or None when it must be submitted.
InlineRunner = Callable[[str, list[Request]], list[Response] | None]


class Drift:
    """How a model's observed batch latencies compare with its profile.

    Each batch that ran alone gives one sample: its observed latency over what the profile
    predicted for it, kept per batch size and for the model as a whole. `ratio` is their
    EWMA (what the metric reports). `scale(units)` is what predictions multiply the profile
    by: the median of the last `window` samples of that batch size (of the model as a whole
    while the size has fewer than `warmup`; 1.0, the profile itself, before that). The
    median is a typical batch; how far batches stray from it is `Slip`'s business.
    """

    def __init__(self, alpha: float = 0.2, warmup: int = 3, window: int = 64) -> None:
        self.alpha = alpha
        self.warmup = warmup
        self._window = window
        self._ewma: float | None = None
        # batch units -> recent samples, and (count, median) of them; None: the model
        self._samples: dict[int | None, deque[float]] = {}
        self._medians: dict[int | None, tuple[int, float]] = {}

    def observe(self, units: int, ratio: float) -> None:
        if not math.isfinite(ratio) or ratio <= 0:
            return
        for key in (units, None):
            self._samples.setdefault(key, deque(maxlen=self._window)).append(ratio)
            self._medians.pop(key, None)  # recomputed when next asked for
        n = len(self._samples[None])
        # the first samples carry more weight, so that the estimate settles quickly
        weight = max(self.alpha, 1.0 / n)
        self._ewma = ratio if self._ewma is None else self._ewma + weight * (ratio - self._ewma)

    @property
    def ratio(self) -> float:
        """The model's observed / profiled latency (EWMA; 1.0 before any sample)."""
        return 1.0 if self._ewma is None else self._ewma

    def scale(self, units: int) -> float:
        known = self._median(units)
        if known[0] < self.warmup:
            known = self._median(None)
        return known[1] if known[0] >= self.warmup else 1.0

    def _median(self, key: int | None) -> tuple[int, float]:
        known = self._medians.get(key)
        if known is None:
            samples = self._samples.get(key)
            known = (len(samples), statistics.median(samples)) if samples else (0, 1.0)
            self._medians[key] = known
        return known


class Slip:
    """How far the group falls behind its typical batch latencies over an interval.

    Each batch that ran alone adds its overrun: observed latency minus the typical (median)
    latency predicted for it, negative when it was faster. A request admitted now finishes
    late by the sum of the overruns of the batches that run before it ends, so admission
    adds, to every predicted finish, `margin(horizon)`: the `quantile` of that sum over
    every interval of `horizon` seconds that starts at one of the last `window` batches.
    This is the observed tail of the error that makes requests late: steady noise adds up
    over the batches ahead, and a rare stall (the event loop or a rank starved of CPU on a
    busy machine) counts for as long as it stays in the window; neither an average batch
    time nor a per-batch tail describes that. Under overload nearly every admitted request
    is admitted with no slack beyond its margin, so the margin's exceedance is the share of
    admitted requests that end late: the goal is at most 1 %, and the quantile (0.995)
    leaves half of that for the window's lag behind a machine that gets busier.
    """

    def __init__(self, window: int = 512, quantile: float = 0.995, warmup: int = 16) -> None:
        if not 0.5 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
        self.quantile = quantile
        self.warmup = warmup
        self._batches: deque[tuple[float, float]] = deque(maxlen=window)  # (end, overrun)
        self._margins: dict[float, float] = {}  # horizon -> margin, until the next batch

    def observe(self, end: float, overrun: float) -> None:
        if math.isfinite(overrun):
            self._batches.append((end, overrun))
            self._margins.clear()

    def margin(self, horizon: float) -> float:
        """Seconds to add to a finish predicted `horizon` seconds ahead (0 before `warmup`
        batches, and never negative: a faster spell does not promise more)."""
        cached = self._margins.get(horizon)
        if cached is not None:
            return cached
        margin = 0.0
        if len(self._batches) >= self.warmup:
            ends = [e for e, _ in self._batches]
            overruns = [o for _, o in self._batches]
            sums = []
            total, j = 0.0, 0
            for i in range(len(ends)):  # a sliding window over [ends[i], ends[i] + horizon]
                while j < len(ends) and ends[j] <= ends[i] + horizon:
                    total += overruns[j]
                    j += 1
                sums.append(total)
                total -= overruns[i]
            sums.sort()
            margin = max(0.0, sums[min(len(sums) - 1, math.ceil(self.quantile * len(sums)) - 1)])
        self._margins[horizon] = margin
        return margin


class LatencyModel:
    """A model's per-batch-size, per-stage latency (from the Plan's profile), scaled by the
    typical latency the group measured (see `Drift`)."""

    def __init__(self, stage_latency_s: dict[int, list[float]], drift: Drift | None = None) -> None:
        rows = sorted((int(b), list(s)) for b, s in stage_latency_s.items() if s)
        self._sizes = [b for b, _ in rows]
        self._first = [float(sum(s)) for _, s in rows]
        self._bottleneck = [float(max(s)) for _, s in rows]
        self.drift = drift or Drift()

    @property
    def known(self) -> bool:
        return bool(self._sizes)

    def first(self, batch: int) -> float:
        """Latency of a batch through an idle pipeline: the sum of its stages."""
        return self._lookup(self._first, batch) * self.drift.scale(batch)

    def bottleneck(self, batch: int) -> float:
        """What each further batch adds once the pipeline is full: its slowest stage."""
        return self._lookup(self._bottleneck, batch) * self.drift.scale(batch)

    def profiled_first(self, batch: int) -> float:
        """`first` as the profile alone predicts it (what drift is measured against)."""
        return self._lookup(self._first, batch)

    def _lookup(self, values: list[float], batch: int) -> float:
        if not self._sizes:
            return 0.0
        for size, v in zip(self._sizes, values, strict=True):
            if size >= batch:  # between profiled sizes: the next profiled size (padding)
                return v
        return values[-1] * batch / self._sizes[-1]  # past the profile: linear in rows


def pack_batches(rows: Iterable[int], max_rows: int) -> list[int]:
    """Greedy FIFO packing of requests (by rows) into batches of at most max_rows rows."""
    batches: list[int] = []
    for r in rows:
        if batches and batches[-1] + r <= max_rows:
            batches[-1] += r
        else:
            batches.append(r)
    return batches


@dataclass(frozen=True)
class RunningBatch:
    start: float
    latency: LatencyModel
    rows: int


def predict_completion(
    now: float,
    running: Iterable[RunningBatch],
    depth: int,
    ahead: Iterable[tuple[LatencyModel, int]],
    own: tuple[LatencyModel, int],
) -> float:
    """When a batch `own` would finish behind the running batches and the batches `ahead`.

    The pipeline accepts a new batch once the previous one has left its bottleneck stage, and
    not before a slot frees when `depth` batches are already running.
    """
    running = list(running)
    t = now
    for b in running:
        t = max(t, b.start + b.latency.bottleneck(b.rows))
    if len(running) >= depth:
        t = max(t, min(b.start + b.latency.first(b.rows) for b in running))
    for lm, rows in ahead:
        t += lm.bottleneck(rows)
    return t + own[0].first(own[1])


@dataclass(eq=False)
class Pending:
    model: str
    request: Request
    rows: int  # cost in batch units: rows times the sequence-length factor (request_units)
    arrival: float
    deadline: float  # math.inf without an SLO
    future: asyncio.Future[Response]
    solo: bool = False  # retried alone after its batch failed
    input_ns: int = 0  # decoding and checking the request before it was submitted
    inferences: int = 0  # its actual rows (Triton's inference count)


@dataclass(eq=False)
class _Probe:
    """A request being considered for admission (what `_simulate` needs of a Pending)."""

    model: str
    rows: int
    arrival: float
    deadline: float


@dataclass(eq=False)
class _InFlight:
    model: str
    members: list[Pending]
    batch: RunningBatch
    alone: bool = True  # dispatched onto an empty pipeline: its latency is the batch's own
    swaps: int = 0  # the engine's swap-ins so far when it was dispatched
    started_ns: int = field(default_factory=time.perf_counter_ns)
    engine_future: Future[list[Response]] | None = None


class Scheduler:
    def __init__(
        self, engine: GroupEngine, max_in_flight: int = 1, clock: Clock = time.monotonic
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.engine = engine
        self.max_in_flight = max_in_flight
        self._clock = clock
        self.infos: dict[str, ModelInfo] = engine.model_infos()
        self.latency = {n: LatencyModel(i.stage_latency_s) for n, i in self.infos.items()}
        self.slip = Slip()
        # horizon of each model's margin: its SLO (the longest a request of it waits)
        self._horizon = {n: i.slo_seconds or 0.0 for n, i in self.infos.items()}
        # how much later than its deadline a request still meets its SLO (admissionSeconds)
        self._slo_slack = {
            n: (i.slo_seconds or 0.0) - (i.admission_bound_seconds or 0.0)
            for n, i in self.infos.items()
        }
        self._idle = asyncio.Event()
        self.stats = {n: ModelStats(n, i.version) for n, i in self.infos.items()}
        self._queues: dict[str, deque[Pending]] = {n: deque() for n in self.infos}
        self._retry: deque[Pending] = deque()
        self._running: list[_InFlight] = []
        # Models unloaded through the repository API: refused until loaded again. Every other
        # hosted model is served even when not resident; the engine swaps it in on demand.
        self.unloaded: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._closed: str | None = None
        self._try_inline: InlineRunner = engine.try_inline

    # ----------------------------------------------------------------- public
    def info(self, model: str) -> ModelInfo:
        info = self.infos.get(model)
        if info is None:
            raise ModelNotFound(
                f"unknown model '{model}' (this group serves: {', '.join(sorted(self.infos))})"
            )
        return info

    def submit(
        self,
        model: str,
        request: Request,
        rows: int,
        arrival: float | None = None,
        input_ns: int = 0,
        units: int | None = None,
    ) -> asyncio.Future[Response]:
        """Queue one (already validated) request; raises Rejected/Unavailable at once.

        From here on the scheduler counts the request's outcome exactly once: a refusal
        here, or whatever ends its future (a cancelled future counts as CANCELED).
        `units` is the request's cost in batch units (oip_codec.request_units; default
        `rows`): admission, batching and latency predictions use it."""
        cost = rows if units is None else units
        now = self._clock()
        arrival = now if arrival is None else arrival
        info = self.info(model)
        stats = self.stats[model]
        refusal: ServingError | None = None
        if self._closed is not None or not self.engine.healthy():
            refusal = Unavailable(self._closed or "the group is unhealthy: a rank is gone")
        elif model in self.unloaded:
            refusal = Unavailable(
                f"model '{model}' is not loaded; POST /v2/repository/models/{model}/load"
            )
        if refusal is not None:
            stats.record_failure(
                refusal.failure_reason, int((now - arrival) * 1e9), refusal.outcome
            )
            raise refusal
        slo = info.admission_bound_seconds
        overhead = info.request_overhead_s
        deadline = math.inf if slo is None else arrival + slo - overhead
        if slo is not None:
            predicted, pushed = self.admission(model, cost, arrival, deadline, now)
            if predicted > deadline or pushed > 0:
                stats.record_rejection("admission", int((now - arrival) * 1e9))
                if predicted > deadline:
                    total = (predicted + overhead - arrival) * 1000
                    limit = admission_limit_text(info.slo_seconds, info.admission_seconds)
                    why = f"predicted {total:.1f} ms > {limit}" + (
                        f" (with a per-request overhead of {overhead * 1000:.1f} ms)"
                        if overhead
                        else ""
                    )
                else:
                    why = "it would make requests admitted earlier miss their SLO"
                raise Rejected(
                    f"model '{model}': rejected by SLO admission: {why}",
                    retry_after_s=max(predicted - deadline, pushed),
                )
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        p = Pending(
            model,
            request,
            cost,
            arrival,
            deadline,
            self._loop.create_future(),
            input_ns=input_ns,
            inferences=rows,
        )
        self._idle.clear()
        stats.pending += 1
        queue = self._queues[model]
        if not queue and not self._retry and len(self._running) < self.max_in_flight:
            # An idle slot and nothing queued (a free slot means every queue is empty): EDF
            # and batching have nothing to choose from, and admission already checked that
            # it can finish alone in time, so it starts now.
            self._dispatch(model, [p])
        else:
            queue.append(p)
            self._pump()
        return p.future

    async def infer(self, model: str, request: Request, rows: int, arrival: float) -> Response:
        return await self.submit(model, request, rows, arrival)

    def predict(self, model: str, rows: int, deadline: float, now: float) -> float:
        """Predicted completion time of a new request of `model` arriving now."""
        ahead: list[tuple[LatencyModel, int]] = []
        for name, queue in self._queues.items():
            if not queue:
                continue
            if name == model:
                continue
            cap = max(self.infos[name].max_batch_size, 1)
            earlier = [p.rows for p in queue if p.deadline <= deadline and not p.future.done()]
            ahead.extend((self.latency[name], b) for b in pack_batches(earlier, cap))
        own_rows = [p.rows for p in self._queues[model] if not p.future.done()]
        own_rows.append(rows)
        own = pack_batches(own_rows, max(self.infos[model].max_batch_size, 1))
        ahead.extend((self.latency[model], b) for b in own[:-1])
        running = [r.batch for r in self._running]
        return predict_completion(
            now, running, self.max_in_flight, ahead, (self.latency[model], own[-1])
        )

    def admission(
        self, model: str, units: int, arrival: float, deadline: float, now: float
    ) -> tuple[float, float]:
        """Honest admission: simulate EDF over everything queued plus the newcomer.

        Returns the newcomer's predicted finish, and how much later the newcomer would make
        an already-admitted request finish past its deadline (0 when none): EDF lets an
        urgent newcomer overtake, so admitting it must not make earlier admissions late.
        Every finish is predicted with typical batch latencies plus the observed tail of
        how far the group falls behind them over an SLO (see `Drift`, `Slip`); a request
        that a slow batch has already pushed into that margin (still on time at a typical
        pace, no longer with the margin) must not be pushed further either."""
        queued = [p for q in self._queues.values() for p in q if not p.future.done()]
        queued += [p for p in self._retry if not p.future.done()]
        probe = _Probe(model, units, arrival, deadline)
        finish = self._simulate([*queued, probe], now)
        pushed = 0.0
        late = [p for p in queued if finish[p] > p.deadline]
        if late:
            before = self._simulate(queued, now)
            for p in late:
                if before[p] <= p.deadline:
                    pushed = max(pushed, finish[p] - p.deadline)
                elif (
                    before[p] - self._margin(p.model) <= p.deadline
                    and finish[p] > before[p] + 1e-6  # (the same prediction computed twice)
                ):
                    # at risk: any further delay counts; a request late even at a typical
                    # pace is not protected (dispatch will give it up)
                    pushed = max(pushed, finish[p] - before[p])
        return finish[probe], pushed

    def _margin(self, model: str) -> float:
        return self.slip.margin(self._horizon[model])

    def _simulate(self, items: Sequence[Pending | _Probe], now: float) -> dict[object, float]:
        """Predicted finish time of each item under the dispatcher's EDF batching."""
        per_model: dict[str, list[Pending | _Probe]] = {}
        for p in sorted(items, key=lambda p: (p.deadline, p.arrival)):
            per_model.setdefault(p.model, []).append(p)
        running = [r.batch for r in self._running]
        t = now
        for b in running:
            t = max(t, b.start + b.latency.bottleneck(b.rows))
        ends = sorted(b.start + b.latency.first(b.rows) for b in running)
        depth = self.max_in_flight
        heads = dict.fromkeys(per_model, 0)
        out: dict[object, float] = {}
        while heads:
            name = min(
                heads,
                key=lambda m: (per_model[m][heads[m]].deadline, per_model[m][heads[m]].arrival),
            )
            queue, i = per_model[name], heads[name]
            cap = max(self.infos[name].max_batch_size, 1)
            lm = self.latency[name]
            start = t if len(ends) < depth else max(t, ends[-depth])
            # the batch the dispatcher will form (`_take_batch`): up to `cap` rows, cut
            # where one more request would make the batch too slow for its tightest deadline
            batch = [queue[i]]
            rows = queue[i].rows
            tightest = queue[i].deadline
            i += 1
            while i < len(queue) and rows + queue[i].rows <= cap:
                p = queue[i]
                if start + lm.first(rows + p.rows) > min(tightest, p.deadline):
                    break
                rows += p.rows
                tightest = min(tightest, p.deadline)
                batch.append(p)
                i += 1
            if i < len(queue):
                heads[name] = i
            else:
                del heads[name]
            end = start + lm.first(rows)
            ends.append(end)
            t = start + lm.bottleneck(rows)
            margin = self._margin(name)
            for p in batch:
                out[p] = end + margin
        return out

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._retry)

    def busy(self) -> bool:
        """Whether any accepted request is still queued or running."""
        return bool(self._running) or self.queued() > 0

    async def wait_idle(self) -> None:
        """Return once no accepted request is queued or running (drain)."""
        while self.busy():
            self._idle.clear()
            await self._idle.wait()

    def drift(self) -> dict[str, float]:
        """Per model: observed over profiled batch latency (1.0 before any batch)."""
        return {name: lm.drift.ratio for name, lm in self.latency.items() if lm.known}

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def fail_model(self, model: str, err: ServingError) -> None:
        """Fail every queued request of one model (it was unloaded)."""
        queue = self._queues[model]
        members = list(queue)
        queue.clear()
        self._finish_failed(members, err)

    def close(self, reason: str = "the server is shutting down") -> None:
        """Refuse new requests and fail every queued one."""
        self._closed = reason
        self._fail_queued(Unavailable(reason))

    # ----------------------------------------------------------------- dispatch
    def _pump(self) -> None:
        while len(self._running) < self.max_in_flight:
            if self._retry:
                p = self._retry.popleft()
                if p.future.done():
                    self._drop_cancelled(p)
                else:
                    self._dispatch(p.model, [p])
                continue
            model = self._earliest_model()
            if model is None:
                return
            batch = self._take_batch(model)
            if batch:
                self._dispatch(model, batch)

    def _earliest_model(self) -> str | None:
        best: str | None = None
        key = (math.inf, math.inf)
        for name, queue in self._queues.items():
            while queue and queue[0].future.done():  # cancelled by a disconnected client
                self._drop_cancelled(queue.popleft())
            if queue and (queue[0].deadline, queue[0].arrival) < key:
                key = (queue[0].deadline, queue[0].arrival)
                best = name
        return best

    def _take_batch(self, model: str) -> list[Pending]:
        queue = self._queues[model]
        cap = max(self.infos[model].max_batch_size, 1)
        lm = self.latency[model]
        now = self._clock()
        batch: list[Pending] = []
        rows = 0
        tightest = math.inf
        while queue:
            p = queue[0]
            if p.future.done():
                self._drop_cancelled(queue.popleft())
                continue
            if now + lm.first(p.rows) > p.deadline:  # too late even alone
                queue.popleft()
                self._reject_late(p, now)
                continue
            if batch and (
                rows + p.rows > cap or now + lm.first(rows + p.rows) > min(tightest, p.deadline)
            ):
                break
            queue.popleft()
            batch.append(p)
            rows += p.rows
            tightest = min(tightest, p.deadline)
        return batch

    def _drop_cancelled(self, p: Pending) -> None:
        stats = self.stats[p.model]
        stats.pending -= 1
        stats.record_failure("CANCELED", int((self._clock() - p.arrival) * 1e9), "cancelled")
        self._note_idle()

    def _note_idle(self) -> None:
        if not self.busy():
            self._idle.set()

    def _reject_late(self, p: Pending, now: float) -> None:
        stats = self.stats[p.model]
        stats.pending -= 1
        stats.record_rejection("deadline", int((now - p.arrival) * 1e9))
        info = self.infos[p.model]
        limit = admission_limit_text(info.slo_seconds, info.admission_seconds)
        p.future.set_exception(
            Rejected(
                f"model '{p.model}': rejected at dispatch: it would finish after its {limit} "
                f"({(now - p.arrival) * 1000:.1f} ms already queued)"
            )
        )
        self._note_idle()

    def _dispatch(self, model: str, batch: list[Pending]) -> None:
        rows = batch[0].rows if len(batch) == 1 else sum(p.rows for p in batch)
        flight = _InFlight(
            model,
            batch,
            RunningBatch(self._clock(), self.latency[model], rows),
            alone=not self._running,
            swaps=self._swaps(),
        )
        self._running.append(flight)
        loop = self._loop
        assert loop is not None
        requests = [batch[0].request] if len(batch) == 1 else [p.request for p in batch]
        on_loop = threading.get_ident() == self._loop_thread
        if on_loop:
            # Small batches run right here, without a concurrent Future to make and read.
            try:
                results = self._try_inline(model, requests)
            except Exception as e:  # the batch failed: same path as an engine failure
                self._finish(flight, None, e)
                return
            if results is not None:
                self._finish(flight, results, None)
                return
        try:
            fut = self.engine.submit(model, requests)
        except Exception as e:  # the engine refused synchronously: same path as a failure
            fut = Future()
            fut.set_exception(e)
        if on_loop and fut.done():
            # The engine ran the batch inline: finish now, so the requests' futures are done
            # before the handlers await them (no loop iterations; _pump's loop goes on).
            self._complete(flight, fut)
            return
        fut.add_done_callback(lambda f: self._hop_back(loop, flight, f))
        flight.engine_future = fut
        for p in batch:
            p.future.add_done_callback(lambda f: self._abandoned(flight) if f.cancelled() else None)

    def _abandoned(self, flight: _InFlight) -> None:
        """A client of a running batch went away. Once nobody waits for the batch and the
        engine has not started it (it waits behind other batches or a swap-in), it is
        withdrawn: it frees its slot at once instead of holding the requests behind it for
        its whole run. A batch already started runs its course; its results are dropped
        without being encoded (`_finish`)."""
        fut = flight.engine_future
        if fut is None or fut.done() or flight not in self._running:
            return
        if all(p.future.cancelled() for p in flight.members):
            fut.cancel()  # False once the engine started it; else `_complete` sees it

    def _hop_back(
        self, loop: asyncio.AbstractEventLoop, flight: _InFlight, fut: Future[list[Response]]
    ) -> None:
        # An engine that finished inline completes on the loop's own thread: no wake-up needed.
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._done, flight, fut)
        else:
            loop.call_soon_threadsafe(self._done, flight, fut)

    def _done(self, flight: _InFlight, fut: Future[list[Response]]) -> None:
        self._complete(flight, fut)
        self._pump()

    def _complete(self, flight: _InFlight, fut: Future[list[Response]]) -> None:
        """Account for a finished batch and resolve its requests (without dispatching)."""
        if fut.cancelled():  # withdrawn before it started: every member's client is gone
            self._running.remove(flight)
            self._finish_failed(flight.members, Cancelled("the clients went away"))
            return
        exc = fut.exception()
        self._finish(flight, None if exc is not None else fut.result(), exc)

    def _finish(
        self, flight: _InFlight, results: list[Response] | None, exc: BaseException | None
    ) -> None:
        self._running.remove(flight)
        compute_ns = time.perf_counter_ns() - flight.started_ns
        stats = self.stats[flight.model]
        if results is not None and len(results) != len(flight.members):
            exc = RuntimeError(
                f"engine returned {len(results)} responses for {len(flight.members)} requests"
            )
        if exc is None and results is not None:
            stats.record_batch(sum(p.inferences for p in flight.members), compute_ns)
            now = self._clock()
            self._learn(flight, now)
            for p, r in zip(flight.members, results, strict=True):
                stats.pending -= 1
                duration = now - p.arrival
                if p.future.cancelled():  # the client left while it ran: nobody waits
                    stats.record_failure("CANCELED", int(duration * 1e9), "cancelled")
                    continue
                stats.record_success(
                    int(duration * 1e9),
                    max(0, int((duration * 1e9) - compute_ns - p.input_ns)),
                    compute_ns,
                    # the SLO, not an admission bound below it
                    now <= p.deadline + self._slo_slack[p.model],
                    p.input_ns,
                )
                if not p.future.done():
                    p.future.set_result(r)
        else:
            self._failed(flight, exc)
        self._note_idle()

    def _learn(self, flight: _InFlight, now: float) -> None:
        """One drift sample: this batch's latency over what the profile predicts for it.

        Only batches that started on an empty pipeline measure their own latency; others
        also waited for the batches ahead of them. A batch that waited for a model to be
        swapped in measures the swap, not the model."""
        if not flight.alone or self._swaps() != flight.swaps:
            return
        lm, rows = flight.batch.latency, flight.batch.rows
        took = now - flight.batch.start
        profiled = lm.profiled_first(rows)
        if profiled > 0:
            self.slip.observe(now, took - lm.first(rows))  # before the sample moves it
            lm.drift.observe(rows, took / profiled)

    def _swaps(self) -> int:
        return sum(count for count, _ in self.engine.swap_totals().values())

    def _failed(self, flight: _InFlight, exc: BaseException | None) -> None:
        model = flight.model
        if not self.engine.healthy():
            # the reason (a rank's error text) is logged by the engine, not sent to clients
            err: ServingError = Unavailable(
                "the group is unhealthy: a rank failed or stopped answering"
            )
            self._finish_failed(flight.members, err)
            self._fail_queued(err)
            return
        if model in self.unloaded:
            self._finish_failed(flight.members, Unavailable(f"model '{model}' was unloaded"))
            return
        if len(flight.members) > 1:
            for p in flight.members:
                p.solo = True
            self._retry.extend(flight.members)
            return
        if isinstance(exc, EngineError):  # the engine's own words about the input
            self._finish_failed(
                flight.members,
                InvalidRequest(f"model '{model}' failed on this request: {exc}"),
                reason="BACKEND",
            )
            return
        # anything else is a bug or a library error whose text (build paths, internals)
        # is not for clients: log it, answer a generic internal error
        log.error("model %s failed on a request: %r", model, exc)
        self._finish_failed(flight.members, EngineFailed(f"model '{model}' failed on this request"))

    def _finish_failed(
        self, members: list[Pending], err: ServingError, reason: str | None = None
    ) -> None:
        now = self._clock()
        for p in members:
            stats = self.stats[p.model]
            stats.pending -= 1
            ns = int((now - p.arrival) * 1e9)
            if p.future.cancelled():
                stats.record_failure("CANCELED", ns, "cancelled")
                continue
            stats.record_failure(reason or err.failure_reason, ns, err.outcome)
            if not p.future.done():
                p.future.set_exception(err)
        self._note_idle()

    def _fail_queued(self, err: ServingError) -> None:
        for queue in self._queues.values():
            members = list(queue)
            queue.clear()
            self._finish_failed(members, err)
        members = list(self._retry)
        self._retry.clear()
        self._finish_failed(members, err)
