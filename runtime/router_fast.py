"""The router's fast path: the common inference request served from callbacks.

Most requests find a live group that admits them and an idle keep-alive connection to it.
For those the coroutine path (the connection's task, five nested coroutines, a future per hop)
costs more than the rest of the router's Python together (docs/router.md, "Overhead"). Here
the request is written to the group from the client's read callback, and the group's answer
is written to the client from the group connection's read callback: no task, no coroutine,
no future.

Only the decisions that end in a send are taken here, and they are the coroutine path's own
(`choose`, `admit`, the same backlog and metrics): a request that the router would refuse
(unknown model, no live group, SLO admission, closing), or that finds no idle connection,
goes the coroutine path with nothing counted yet. After the send, every outcome other than an
answer to hand back (the group broke the connection, answered 503, or had closed the idle
connection) continues on the coroutine path from the same retry state, so retries,
timeouts and the counts are the same on both paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from statmux.runtime.router_dispatch import Ticket
from statmux.runtime.router_upstream import Exchange, HopTimeout, Outcome, Reply, Stale
from statmux.runtime.serving_errors import ServingError

if TYPE_CHECKING:
    from statmux.runtime.router_core import GroupState, Router
    from statmux.runtime.router_metrics import ModelMetrics

log = logging.getLogger("statmux.router")

# What the requester gets: the group's reply, the router's own refusal, or a bug (500).
Result = Reply | ServingError | Exception


class FastInfer:
    """One inference request in flight on the fast path."""

    __slots__ = (
        "_arrival",
        "_body",
        "_done",
        "_headers",
        "_hosts",
        "_mm",
        "_model",
        "_path",
        "_router",
        "_rows",
        "_slo",
        "_st",
        "_task",
        "exchange",
        "ticket",
    )

    def __init__(
        self,
        router: Router,
        model: str,
        hosts: list[GroupState],
        mm: ModelMetrics,
        path: str,
        body: bytes,
        headers: bytes,
        rows: int,
        arrival: float,
        st: GroupState,
        done: Callable[[Result], None],
    ) -> None:
        self._router = router
        self._model = model
        self._hosts = hosts
        self._mm = mm
        self._path = path
        self._body = body
        self._headers = headers
        self._rows = rows
        self._arrival = arrival
        self._slo = router.config.slo_seconds[model]
        self._st = st
        self._done = done
        self._task: asyncio.Task[None] | None = None
        self.exchange: Exchange | None = None
        self.ticket: Ticket | None = None

    def on_upstream(self, outcome: Outcome) -> None:
        """The group's answer or the hop's failure (from the connection's callback)."""
        self.exchange = None
        router, st, mm = self._router, self._st, self._mm
        if self.ticket is not None:
            st.backlog.release(self.ticket, router.clock())
        try:
            if isinstance(outcome, Reply):
                if outcome.status != 503:
                    st.slow_probes = 0
                    router._record(mm, outcome.status, self._arrival, self._slo)
                    self._done(outcome)
                    return
                router.mark_down(st, f"answered 503: {router.error_text(outcome)}")
                tried = [st]
            elif isinstance(outcome, HopTimeout):
                router.metrics.hop_timeouts.labels(st.group.name).inc()
                mm.failed["timeout"] += 1
                self._done(router.gateway_timeout(st, outcome))
                return
            elif isinstance(outcome, Stale):
                tried = []  # the group never read it: send again, anywhere
            else:  # Broken
                router.mark_down(st, str(outcome))
                tried = [st]
        except Exception as e:  # a bug: answer 500 rather than leave the client waiting
            log.exception("fast path: unhandled error for model %s", self._model)
            mm.failed["internal"] += 1
            self._done(e)
            return
        self._task = asyncio.ensure_future(self._resume(tried))

    async def _resume(self, tried: list[GroupState]) -> None:
        """The rest of the request on the coroutine path, from the same retry state."""
        mm = self._mm
        try:
            reply = await self._router._dispatch(
                self._model,
                self._hosts,
                mm,
                self._path,
                self._body,
                self._headers,
                self._rows,
                self._arrival,
                tried,
            )
        except asyncio.CancelledError:
            mm.failed["cancelled"] += 1
            raise
        except ServingError as e:  # counted where it was decided
            self._done(e)
            return
        except Exception as e:
            log.exception("unhandled error for model %s", self._model)
            mm.failed["internal"] += 1
            self._done(e)
            return
        self._done(reply)

    def cancel(self) -> None:
        """The client went away: no answer is delivered, the request counts as cancelled."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.cancel()
            if self.ticket is not None:
                self._st.backlog.release(self.ticket, self._router.clock())
            self._mm.failed["cancelled"] += 1
        elif self._task is not None:
            self._task.cancel()


def start_fast(
    router: Router,
    model: str,
    path: str,
    body: bytes,
    headers: bytes,
    rows: int,
    arrival: float,
    done: Callable[[Result], None],
) -> FastInfer | None:
    """Send the request to its group now if the fast path can take it; None (nothing sent,
    nothing counted) when it needs the coroutine path, `Router.infer`. `done` gets the result
    later, from the event loop, never before this returns."""
    if router.closing is not None:
        return None
    hosts = router.by_model.get(model)
    if hosts is None:
        return None
    st, cand_latency, now = router.best_admitted(model, hosts, rows, arrival)
    if st is None:
        return None
    mm = router.model_metrics(model)
    fast = FastInfer(router, model, hosts, mm, path, body, headers, rows, arrival, st, done)
    exchange = router.upstreams.start("POST", st.group.url + path, body, headers, fast.on_upstream)
    if exchange is None:
        return None
    router.fast_requests += 1
    mm.requests += 1
    mm.arrivals.add()
    fast.ticket = st.backlog.commit(now, cand_latency)
    fast.exchange = exchange
    return fast
