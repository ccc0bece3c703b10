"""The router's dispatch rule and SLO-aware admission: the simulator's, on live groups.

Rule (statmux.placement.sim_policy.route_earliest + admit, with sim_exec.pipeline_end):
a request of model m arriving at t goes to the live group hosting m that would complete it
earliest, given that group's outstanding work; ties go to the group listed first in the Plan.
If even that completion is past t + SLO(m), the request is rejected at once.

Outstanding work is estimated from the Plan, exactly as the simulator's `est` does: each group
keeps the time each of its pp stages frees, a dispatched request occupies every stage for its
profiled batch latency (s_k = max(e_{k-1}, free_k), e_k = s_k + l_k). The groups correct the
estimate: whenever a response comes back, the group's stage times are recomputed from the
requests still outstanding there, replayed from now (a group with nothing outstanding is idle
now, whatever the profile predicted). The estimate is therefore never behind by more than one
response, and errs on the late side (conservative), like the simulator's.

Pure logic, no I/O: the router calls `choose`, `commit` and `release` on its event loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
        """The group answered (or failed) `ticket`: re-estimate from what is still out."""
        if self.outstanding.pop(ticket.id, None) is None:
            return
        free = [now] * self.pp
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


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None  # None: no candidate
    completion: float  # predicted completion time (inf without a candidate)


def choose(candidates: Iterable[Candidate], rows: int, now: float) -> Choice:
    """The candidate that completes a `rows`-row request arriving now earliest (first wins
    ties, as in the simulator)."""
    best: Candidate | None = None
    best_end = math.inf
    for c in candidates:
        end = c.backlog.finish(now, c.model.stage_latency(rows))
        if end < best_end:
            best, best_end = c, end
    return Choice(best, best_end)


def admit(choice: Choice, deadline: float) -> bool:
    """The simulator's admission: only requests some group can finish by their deadline."""
    return choice.candidate is not None and choice.completion <= deadline
