"""The router's dispatch rule and SLO-aware admission: the simulator's, on live groups.

Rule (statmux.placement.sim_policy.route_earliest + admit, with sim_exec.pipeline_end):
a request of model m arriving at t goes to the live group hosting m that would complete it
earliest, given that group's outstanding work; ties go to the group listed first in the Plan.
If even that completion is past t + SLO(m), the request is rejected at once.

Outstanding work is estimated from the Plan, exactly as the simulator's `est` does: each group
keeps the time each of its pp stages frees, a dispatched request occupies every stage for its
profiled batch latency (s_k = max(e_{k-1}, free_k), e_k = s_k + l_k). Latencies carry the
Plan's overheads as the simulator applies them (PlanModel.served_stage_latency; the
per-request overhead is added to the completion and so counts against the SLO).

The groups correct the estimate: whenever a response comes back, the group's stage times are
recomputed from the requests still outstanding there, replayed from the answered request's
exit from each stage (it left the last stage now; a group with nothing outstanding is idle
now, whatever the profile predicted). The estimate is therefore never behind by more than
one response, and between answers it follows the profile, as the simulator does. (Replaying
every outstanding request from now, as an earlier version did, assumed that a pipeline
restarts its work at each answer: it over-estimated a busy pp2 group's backlog by about one
stage per answer and rejected requests that the simulator admits.)

Pure logic, no I/O: the router calls `choose`, `commit` and `release` on its event loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from statmux.placement.plan import PlanModel


def pipeline_end(t: float, free: Sequence[float], lat: Sequence[float]) -> float:
    """Completion of a batch entering at t (the simulator's sim_exec.pipeline_end)."""
    e = t
    for f, latency in zip(free, lat, strict=False):
        if f > e:
            e = f
        e += latency
    return e


@dataclass(eq=False)
class Ticket:
    """One request outstanding at a group."""

    id: int
    dispatched: float
    lat: tuple[float, ...]
    completion: float  # predicted when dispatched


_ids = itertools.count()


@dataclass(eq=False)
class Backlog:
    """Estimated stage free times of one group, and the requests it has not answered yet."""

    pp: int
    free: list[float] = field(default_factory=list)
    outstanding: dict[int, Ticket] = field(default_factory=dict)  # dispatch order

    def __post_init__(self) -> None:
        if not self.free:
            self.free = [0.0] * self.pp

    def finish(self, now: float, lat: Sequence[float]) -> float:
        return pipeline_end(now, self.free, lat)

    def commit(self, now: float, lat: Sequence[float]) -> Ticket:
        e = now
        for k, latency in enumerate(lat):
            e = max(e, self.free[k]) + latency
            self.free[k] = e
        ticket = Ticket(next(_ids), now, tuple(lat), e)
        self.outstanding[ticket.id] = ticket
        return ticket

    def release(self, ticket: Ticket, now: float) -> None:
        """The group answered (or failed) `ticket`: re-estimate from what is still out.

        The answer anchors the pipeline: `ticket` left its last stage now, so (by its stage
        latencies) it left stage k at now minus the stages after k, and a request still out
        entered no stage before it (a group feeds its pipeline in order). The requests still
        out are replayed from those times in the order they were sent, none before it was
        sent: each still needs at least its last stage from now."""
        if self.outstanding.pop(ticket.id, None) is None:
            return
        free = [now] * self.pp
        after = 0.0
        for k in range(min(self.pp, len(ticket.lat)) - 1, -1, -1):
            free[k] = now - after
            after += ticket.lat[k]
        for t in self.outstanding.values():
            e = t.dispatched
            for k, latency in enumerate(t.lat):
                e = max(e, free[k]) + latency
                free[k] = e
        self.free = free

    @property
    def count(self) -> int:
        return len(self.outstanding)


@dataclass(eq=False)
class Candidate:
    """What dispatch needs to know about one group hosting the model."""

    name: str
    model: PlanModel
    backlog: Backlog
    overhead: float = field(init=False)  # the per-request overhead, after the stages
    _served: dict[int, list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.overhead = self.model.request_overhead_seconds
        self._served = {}

    def served(self, rows: int) -> list[float]:
        """The Plan's stage latencies for `rows` with the per-stage overheads (remembered:
        a Plan is immutable, and a plan change makes new candidates)."""
        lat = self._served.get(rows)
        if lat is None:
            lat = self._served[rows] = self.model.served_stage_latency(rows)
        return lat


class Choice(NamedTuple):  # a tuple: made for every request, and cheaper than a dataclass
    candidate: Candidate | None  # None: no candidate
    completion: float  # predicted completion time (inf without a candidate)


def choose(candidates: Iterable[Candidate], rows: int, now: float) -> Choice:
    """The candidate that completes a `rows`-row request arriving now earliest (first wins
    ties, as in the simulator). Latencies are the Plan's with its overheads, as the
    simulator applies them: per-stage ones in the stages, the per-request one after."""
    best: Candidate | None = None
    best_end = math.inf
    for c in candidates:
        end = pipeline_end(now, c.backlog.free, c.served(rows)) + c.overhead
        if end < best_end:
            best, best_end = c, end
    return Choice(best, best_end)


def admit(choice: Choice, deadline: float) -> bool:
    """The simulator's admission: only requests some group can finish by their deadline."""
    return choice.candidate is not None and choice.completion <= deadline
