"""Cumulative per-stage compute and transfer time, per model, on every rank of a group.

Each rank owns one `StageClock` for its stage. Compute is the stage's forward (tensor-parallel
all-reduces included); transfer is receiving the activations after their header arrived plus
sending the stage's output on (on CPU a queued send, timed on the rank's sender thread; a
blocking send also waits until the next stage takes it).
The totals travel to the leader in the timing slots of the RUN headers (runtime/pipeline.py),
and `StageTimes` keeps the latest totals the leader has seen for each (model, stage).
"""

from __future__ import annotations

import threading

from statmux.runtime.pipeline import TIMING_FIELDS


class StageClock:
    """This rank's running totals per model index: [compute ns, transfer ns, batches]."""

    def __init__(self) -> None:
        self._totals: dict[int, list[int]] = {}
        self._lock = threading.Lock()  # the rank's sender thread adds its sends' time

    def add(self, model: int, compute_ns: int, transfer_ns: int, batches: int = 1) -> None:
        with self._lock:
            acc = self._totals.get(model)
            if acc is None:
                acc = self._totals[model] = [0, 0, 0]
            acc[0] += compute_ns
            acc[1] += transfer_ns
            acc[2] += batches

    def totals(self, model: int) -> tuple[int, int, int]:
        with self._lock:
            acc = self._totals.get(model)
            return (0, 0, 0) if acc is None else (acc[0], acc[1], acc[2])

    def models(self) -> list[int]:
        with self._lock:
            return list(self._totals)

    def stamp(self, timings: list[int], stage: int, stages: int, model: int) -> list[int]:
        """`timings` (as received, possibly empty) with this stage's slot set to its totals."""
        out = (
            list(timings)
            if len(timings) == TIMING_FIELDS * stages
            else [0] * (TIMING_FIELDS * stages)
        )
        base = TIMING_FIELDS * stage
        out[base : base + TIMING_FIELDS] = self.totals(model)
        return out


class StageTimes:
    """The leader's view: the latest totals each stage reported, per model index."""

    def __init__(self, stages: int) -> None:
        self.stages = stages
        self._latest: dict[int, list[tuple[int, int, int]]] = {}
        self._lock = threading.Lock()

    def update(self, model: int, timings: list[int]) -> None:
        """Record the slots of a returned RUN header (totals only grow: keep the largest)."""
        if len(timings) != TIMING_FIELDS * self.stages:
            return
        slots = [
            (timings[i], timings[i + 1], timings[i + 2])
            for i in range(0, len(timings), TIMING_FIELDS)
        ]
        with self._lock:
            old = self._latest.get(model)
            if old is not None:
                slots = [
                    new if new[2] >= prev[2] else prev for new, prev in zip(slots, old, strict=True)
                ]
            self._latest[model] = slots

    def reported(self) -> dict[int, list[tuple[int, int, int]]]:
        with self._lock:
            return {m: list(s) for m, s in self._latest.items()}
