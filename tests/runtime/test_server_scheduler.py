"""Pure-logic tests of the scheduler: latency prediction, admission, EDF order, batching.

A scripted engine (futures completed by the test) and a fake clock make the order and the
predictions deterministic; the real engine is exercised by the server tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from concurrent.futures import Future

import numpy as np
import pytest

from statmux.runtime.engine import (
    EngineError,
    GroupEngine,
    ModelInfo,
    Request,
    Response,
    TensorSpec,
)
from statmux.runtime.scheduler import (
    Drift,
    LatencyModel,
    RunningBatch,
    Scheduler,
    Slip,
    pack_batches,
    predict_completion,
)
from statmux.runtime.serving_errors import Rejected, Unavailable


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ScriptedEngine(GroupEngine):
    """Records every submitted batch; the test completes them."""

    def __init__(self, infos: list[ModelInfo]) -> None:
        self.infos = {i.name: i for i in infos}
        self.batches: list[tuple[str, list[Request], Future[list[Response]]]] = []
        self.is_healthy = True
        self.swaps = 0

    def model_infos(self) -> dict[str, ModelInfo]:
        return self.infos

    def submit(self, model: str, batch: list[Request]) -> Future[list[Response]]:
        fut: Future[list[Response]] = Future()
        self.batches.append((model, batch, fut))
        return fut

    def load(self, model: str) -> float:
        return 0.0

    def unload(self, model: str) -> None:
        pass

    def loaded(self) -> set[str]:
        return set(self.infos)

    def healthy(self) -> bool:
        return self.is_healthy

    def shutdown(self) -> None:
        pass

    def swap_totals(self) -> dict[str, tuple[int, float]]:
        return {"any": (self.swaps, 0.0)}

    def complete(self, index: int) -> None:
        _, batch, fut = self.batches[index]
        fut.set_result([{"y": r["x"] * 2} for r in batch])


def info(name: str, slo: float | None, latency: float = 0.1, max_batch: int = 4) -> ModelInfo:
    return ModelInfo(
        name=name,
        platform="test",
        inputs=[TensorSpec("x", "FP32", (-1, 1))],
        outputs=[TensorSpec("y", "FP32", (-1, 1))],
        max_batch_size=max_batch,
        slo_seconds=slo,
        stage_latency_s={b: [latency * (1 + 0.1 * (b - 1))] for b in range(1, max_batch + 1)},
    )


def req(v: float) -> Request:
    return {"x": np.array([[v]], dtype=np.float32)}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- latency model
def test_latency_model_sums_stages_for_first_batch_and_takes_bottleneck_after() -> None:
    lm = LatencyModel({1: [0.02, 0.05, 0.03], 4: [0.04, 0.09, 0.05]})
    assert lm.first(1) == pytest.approx(0.10)
    assert lm.bottleneck(1) == pytest.approx(0.05)
    # batch 2 and 3 run at the next profiled size (padded to 4)
    assert lm.first(3) == pytest.approx(0.18)
    assert lm.bottleneck(2) == pytest.approx(0.09)
    # past the profile: linear in rows
    assert lm.first(8) == pytest.approx(0.36)
    assert not LatencyModel({}).known and LatencyModel({}).first(3) == 0.0


def test_pack_batches_is_fifo_and_respects_the_row_cap() -> None:
    assert pack_batches([1, 1, 1, 1, 1], 2) == [2, 2, 1]
    assert pack_batches([3, 2, 1], 4) == [3, 3]
    assert pack_batches([], 4) == []


def test_prediction_adds_bottleneck_per_extra_batch_and_sum_for_own() -> None:
    lm = LatencyModel({1: [0.02, 0.05, 0.03]})
    idle = predict_completion(10.0, [], 3, [], (lm, 1))
    assert idle == pytest.approx(10.10)
    behind_two = predict_completion(10.0, [], 3, [(lm, 1), (lm, 1)], (lm, 1))
    assert behind_two == pytest.approx(10.0 + 2 * 0.05 + 0.10)
    # a batch that started at 9.99 holds the bottleneck until 10.04
    running = [RunningBatch(9.99, lm, 1)]
    assert predict_completion(10.0, running, 3, [], (lm, 1)) == pytest.approx(10.04 + 0.10)
    # with the pipeline full (depth 1), wait for the running batch to leave entirely
    assert predict_completion(10.0, running, 1, [], (lm, 1)) == pytest.approx(10.09 + 0.10)


# --------------------------------------------------------------------------- dispatch
def test_edf_across_models_and_dynamic_batching() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine([info("a", 2.0), info("b", 1.0), info("c", None)])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        first = sched.submit("c", req(0), 1)  # dispatched at once: the pipeline is idle
        clock.t = 0.05
        late_a = [sched.submit("a", req(i), 1) for i in range(5)]  # deadline 2.05
        clock.t = 0.10
        urgent_b = sched.submit("b", req(9), 1)  # deadline 1.10: earliest
        later_c = sched.submit("c", req(7), 1)  # no deadline: last
        assert [m for m, _, _ in engine.batches] == ["c"]
        engine.complete(0)
        await settle()
        assert (await first)["y"][0, 0] == 0
        assert [m for m, _, _ in engine.batches] == ["c", "b"]
        engine.complete(1)
        await settle()
        assert (await urgent_b)["y"][0, 0] == 18
        # a's five requests: one batch of max_batch_size 4, then one of 1
        assert engine.batches[2][0] == "a" and len(engine.batches[2][1]) == 4
        engine.complete(2)
        await settle()
        assert engine.batches[3][0] == "a" and len(engine.batches[3][1]) == 1
        engine.complete(3)
        await settle()
        assert engine.batches[4][0] == "c"
        engine.complete(4)
        results = [(await f)["y"][0, 0] for f in late_a]
        assert results == [0, 2, 4, 6, 8]
        assert (await later_c)["y"][0, 0] == 14
        assert sched.stats["a"].execution_count == 2 and sched.stats["a"].inference_count == 5
        assert all(s.pending == 0 for s in sched.stats.values())

    asyncio.run(scenario())


def test_several_batches_in_flight_up_to_pipeline_depth() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine([info("a", None, max_batch=1)])
        sched = Scheduler(engine, max_in_flight=3, clock=FakeClock())
        futures = [sched.submit("a", req(i), 1) for i in range(5)]
        assert len(engine.batches) == 3
        engine.complete(1)
        await settle()
        assert len(engine.batches) == 4
        for i in (0, 2, 3):
            engine.complete(i)
        await settle()
        engine.complete(4)
        assert [(await f)["y"][0, 0] for f in futures] == [0, 2, 4, 6, 8]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- admission
def test_admission_rejects_requests_predicted_to_miss_their_slo() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine([info("a", 0.25, latency=0.1, max_batch=1), info("n", None)])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        running = sched.submit("a", req(1), 1)  # finishes at 0.1
        queued = sched.submit("a", req(2), 1)  # 0.1 + 0.1 = 0.2 <= 0.25
        with pytest.raises(Rejected) as e:
            sched.submit("a", req(3), 1)  # 0.3 > 0.25
        assert "rejected by SLO admission: predicted 300.0 ms > SLO 250.0 ms" in str(e.value)
        assert sched.stats["a"].rejected == {"admission": 1}
        assert sched.stats["a"].failures["REJECTED"] == 1
        # a model without SLO is never rejected, however long its queue
        no_slo = [sched.submit("n", req(i), 1) for i in range(50)]
        assert len(no_slo) == 50
        for f in (running, queued, *no_slo):
            f.cancel()

    asyncio.run(scenario())


def test_admission_leaves_the_per_request_overhead_out_of_the_pipelines_budget() -> None:
    """As in the simulator: a request's fixed overhead (front end, router) is spent outside
    the pipeline, so the pipeline must finish it by arrival + SLO - overhead."""

    async def scenario() -> None:
        clock = FakeClock()
        plain = info("a", 0.25, latency=0.1, max_batch=1)
        with_overhead = dataclasses.replace(plain, request_overhead_s=0.06)
        for model_info, admitted in ((plain, 2), (with_overhead, 1)):
            sched = Scheduler(ScriptedEngine([model_info]), max_in_flight=1, clock=clock)
            futures = [sched.submit("a", req(1), 1)]  # the pipeline finishes it at 0.1
            try:
                # the second finishes at 0.2: within 0.25, but not within 0.25 - 0.06
                futures.append(sched.submit("a", req(2), 1))
            except Rejected as e:
                assert "predicted 260.0 ms > SLO 250.0 ms" in str(e)
                assert "per-request overhead of 60.0 ms" in str(e)
            assert len(futures) == admitted
            assert sched.stats["a"].rejected == ({"admission": 1} if admitted == 1 else {})
            for f in futures:
                f.cancel()

    asyncio.run(scenario())


def test_admission_counts_earlier_deadlines_of_other_models() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine(
            [info("tight", 0.5, latency=0.1, max_batch=1), info("loose", 0.35, 0.1, max_batch=1)]
        )
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        sched.submit("tight", req(0), 1)  # running until 0.1
        sched.submit("tight", req(1), 1)  # queued, deadline 0.5
        sched.submit("tight", req(2), 1)  # queued, deadline 0.5
        # loose's deadline 0.35 is earlier than tight's queue: EDF serves it first
        assert sched.predict("loose", 1, 0.35, 0.0) == pytest.approx(0.2)
        # arriving at 0.2 (running batch done), tight's queue (deadlines 0.5 <= 0.55) goes first
        clock.t = 0.2
        assert sched.predict("loose", 1, 0.55, 0.2) == pytest.approx(0.2 + 2 * 0.1 + 0.1)

    asyncio.run(scenario())


def test_a_slightly_optimistic_profile_is_corrected_too() -> None:
    """7 % slower than profiled (inside the band the profile used to be trusted in): the
    error piles up over the batches ahead, so predictions use the observed median."""
    lm = LatencyModel({1: [0.1]})
    for _ in range(5):
        lm.drift.observe(1, 1.07)
    assert lm.first(1) == pytest.approx(0.107)
    # the median, not the mean: one outlier (a swap-in) does not move typical predictions
    drift = Drift()
    for ratio in [1.0] * 9 + [5.0]:
        drift.observe(1, ratio)
    assert drift.scale(1) == pytest.approx(1.0) and drift.ratio > 1.1


def test_slip_margin_is_the_tail_of_lateness_over_the_horizon() -> None:
    slip = Slip(window=512, quantile=0.99, warmup=16)
    assert slip.margin(0.5) == 0.0  # nothing learned yet
    # a batch every 100 ms, each 2 ms slower than typical, one stalled by 80 ms
    for i in range(100):
        slip.observe(0.1 * (i + 1), 0.08 if i == 50 else 0.002)
    # a 0.5 s horizon spans about six batches: 6 % of such intervals hold the stall
    assert slip.margin(0.5) == pytest.approx(0.08 + 0.002 * 5, abs=0.0025)
    # a 50 ms horizon spans one batch: the stall is in 1 % of them, the 99th percentile
    # interval only in the steady 2 ms
    assert slip.margin(0.05) == pytest.approx(0.002)
    faster = Slip(warmup=2)
    for i in range(10):
        faster.observe(0.1 * i, -0.01)
    assert faster.margin(0.5) == 0.0  # a faster spell does not promise more


def test_admission_adds_the_learned_slip() -> None:
    """Batches that now and then stall by 80 ms: a request that fits its SLO at the typical
    pace but not with the observed tail of the slip is rejected (it used to be admitted)."""

    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine([info("a", 0.35, latency=0.1, max_batch=1)])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        for i in range(20):  # alone on the pipeline, each batch is one sample
            f = sched.submit("a", req(i), 1)
            clock.t += 0.18 if i % 5 == 0 else 0.1
            engine.complete(i)
            await settle()
            await f
        assert sched.latency["a"].first(1) == pytest.approx(0.1)  # the typical batch
        assert sched.slip.margin(0.35) >= 0.08
        running = sched.submit("a", req(20), 1)  # finishes at +0.1
        queued = sched.submit("a", req(21), 1)  # +0.2, and the margin: within 0.35
        with pytest.raises(Rejected, match="SLO admission"):
            sched.submit("a", req(22), 1)  # +0.3 <= 0.35 typically, but not with the slip
        for f in (running, queued):
            f.cancel()

    asyncio.run(scenario())


def test_a_batch_that_waited_for_a_swap_in_teaches_nothing() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine([info("a", 1.0, latency=0.1, max_batch=1)])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        for i in range(4):
            f = sched.submit("a", req(i), 1)
            engine.swaps += i == 0  # the first batch swapped the model in: 2 s
            clock.t += 2.0 if i == 0 else 0.1
            engine.complete(i)
            await settle()
            await f
        assert sched.latency["a"].drift.ratio == pytest.approx(1.0)
        assert sched.latency["a"].first(1) == pytest.approx(0.1)

    asyncio.run(scenario())


def test_a_request_already_in_the_margin_is_not_pushed_further() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine(
            [info("b", 0.5, latency=0.1, max_batch=1), info("a", 0.15, 0.02, max_batch=1)]
        )
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        for i in range(40):  # learned: every batch 5 ms slower than typical
            sched.slip.observe(0.1 * (i + 1), 0.005)
        margin = sched.slip.margin(0.5)
        assert 0.02 < margin < 0.04
        b = [sched.submit("b", req(i), 1) for i in range(4)]  # finish 0.1 .. 0.4 + margin
        # the running batch overruns: b[3] now finishes at 0.48, within 0.5 only typically
        clock.t = 0.18
        with pytest.raises(Rejected, match="admitted earlier"):
            sched.submit("a", req(9), 1)  # would overtake b[1..3] (deadline 0.33 < 0.5)
        # once b[2] and b[3] are late even at a typical pace (0.54, 0.64) they are not
        # protected (dispatch will give them up), and b[1] (0.44) still makes it
        clock.t = 0.34
        sched.submit("a", req(10), 1).cancel()
        for f in b:
            f.cancel()

    asyncio.run(scenario())


def test_request_past_its_deadline_is_dropped_at_dispatch() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = ScriptedEngine([info("a", 0.25, latency=0.1, max_batch=1)])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        first = sched.submit("a", req(1), 1)
        second = sched.submit("a", req(2), 1)
        clock.t = 0.2  # the first batch ran late; the second can no longer make 0.25
        engine.complete(0)
        await settle()
        assert (await first)["y"][0, 0] == 2
        with pytest.raises(Rejected, match="rejected at dispatch"):
            await second
        assert len(engine.batches) == 1
        assert sched.stats["a"].rejected == {"deadline": 1}
        assert sched.stats["a"].within_slo == 1

    asyncio.run(scenario())


def test_admission_and_deadlines_use_the_plans_bound_below_the_slo() -> None:
    """admissionSeconds: admission and the dispatch deadline use the bound; a request that
    finishes after the bound but within the SLO still counts within the SLO."""

    async def scenario() -> None:
        clock = FakeClock()
        bounded = dataclasses.replace(
            info("a", 0.5, latency=0.1, max_batch=1), admission_seconds=0.15
        )
        engine = ScriptedEngine([bounded])
        sched = Scheduler(engine, max_in_flight=1, clock=clock)
        first = sched.submit("a", req(1), 1)  # 0.1 <= 0.15
        with pytest.raises(Rejected) as e:
            sched.submit("a", req(2), 1)  # 0.2: within the SLO, over the bound
        assert (
            "predicted 200.0 ms > admission bound 150.0 ms (the Plan's admissionSeconds, "
            "below the SLO 500.0 ms)" in str(e.value)
        )
        clock.t = 0.3  # late for the bound, within the SLO
        engine.complete(0)
        await settle()
        assert (await first)["y"][0, 0] == 2
        assert sched.stats["a"].rejected == {"admission": 1}
        assert sched.stats["a"].within_slo == 1
        late = sched.submit("a", req(3), 1)  # arrives at 0.3: admitted (0.4 <= 0.45)
        clock.t = 0.9  # past the SLO as well
        engine.complete(1)
        await settle()
        await late
        assert sched.stats["a"].within_slo == 1

    asyncio.run(scenario())


# --------------------------------------------------------------------------- failures
def test_failed_batch_is_retried_request_by_request() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine([info("a", None)])
        sched = Scheduler(engine, max_in_flight=1, clock=FakeClock())
        blocker = sched.submit("a", req(0), 1)
        good = sched.submit("a", req(1), 1)
        bad = sched.submit("a", req(-1), 1)
        engine.complete(0)
        await settle()
        await blocker
        assert len(engine.batches[1][1]) == 2
        engine.batches[1][2].set_exception(EngineError("negative input"))
        await settle()
        assert [len(b) for _, b, _ in engine.batches[2:]] == [1]
        engine.complete(2)
        await settle()
        engine.batches[3][2].set_exception(EngineError("negative input"))
        assert (await good)["y"][0, 0] == 2
        with pytest.raises(Exception, match="failed on this request: negative input"):
            await bad
        assert sched.stats["a"].failures["BACKEND"] == 1

    asyncio.run(scenario())


def test_unhealthy_group_fails_running_and_queued_requests_and_refuses_new() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine([info("a", None, max_batch=1)])
        sched = Scheduler(engine, max_in_flight=1, clock=FakeClock())
        running = sched.submit("a", req(0), 1)
        queued = sched.submit("a", req(1), 1)
        engine.is_healthy = False
        engine.batches[0][2].set_exception(RuntimeError("rank 1 exited"))
        await settle()
        for f in (running, queued):
            with pytest.raises(Unavailable, match="unhealthy"):
                await f
        with pytest.raises(Unavailable):
            sched.submit("a", req(2), 1)
        # the refusal counts too: every request ends as exactly one outcome
        assert sched.stats["a"].failures["BACKEND"] == 3 and sched.stats["a"].pending == 0
        assert sched.stats["a"].outcomes["unavailable"] == 3

    asyncio.run(scenario())


def test_cancelled_requests_are_skipped() -> None:
    async def scenario() -> None:
        engine = ScriptedEngine([info("a", None)])
        sched = Scheduler(engine, max_in_flight=1, clock=FakeClock())
        sched.submit("a", req(0), 1)
        gone = sched.submit("a", req(1), 1)
        kept = sched.submit("a", req(2), 1)
        gone.cancel()
        engine.complete(0)
        await settle()
        assert len(engine.batches[1][1]) == 1
        engine.complete(1)
        assert (await kept)["y"][0, 0] == 4
        assert sched.stats["a"].failures["CANCELED"] == 1
        assert math.isinf(sched.predict("a", 1, math.inf, 0.0)) is False

    asyncio.run(scenario())
