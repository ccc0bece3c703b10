"""The router's state and request path: dispatch, admission, retries, health, plan changes.

Everything runs on one event loop (no locks). Protocol servers (router_http, router_grpc)
call `Router.infer` with the request body as bytes and get the group's reply as bytes.

- Dispatch and admission: statmux.runtime.router_dispatch (the simulator's rule).
- Faults: a group that refuses the connection, breaks it, or answers 503 is taken out of
  rotation and the request goes to the next-best live replica (inference has no side effects,
  so a request whose connection broke mid-way is safe to send again); health checks
  (GET /v2/health/ready every --health-interval) put groups back when they answer again. A
  hop that times out is not retried (the group may still be running it): 504.
- Plan changes: `apply` swaps in a new RouterConfig. Groups that stay keep their state; groups
  that leave get no new requests and are kept until their outstanding requests are answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from statmux.runtime.router_config import RoutedGroup, RouterConfig
from statmux.runtime.router_dispatch import Backlog, Candidate, admit, choose
from statmux.runtime.router_metrics import GroupGauges, ModelMetrics, RouterMetrics
from statmux.runtime.router_upstream import (
    Broken,
    HopTimeout,
    NotAccepted,
    Reply,
    Upstreams,
    probe_ready,
)
from statmux.runtime.serving_errors import (
    Draining,
    ModelNotFound,
    Rejected,
    ServingError,
    Unavailable,
    admission_limit_text,
)

log = logging.getLogger("statmux.router")

ReadyWhen = Literal["all", "any"]
SLOW_PROBES = 3


class GatewayTimeout(ServingError):
    """A group did not answer within the hop timeout."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


@dataclass(eq=False)
class GroupState:
    group: RoutedGroup
    backlog: Backlog
    up: bool = False
    why_down: str = "not checked yet"
    leaving: bool = False
    slow_probes: int = 0  # health checks in a row that timed out
    candidates: dict[str, Candidate] = field(default_factory=dict)

    def set_group(self, group: RoutedGroup) -> None:
        self.group = group
        self.candidates = {
            name: Candidate(group.name, m, self.backlog) for name, m in group.models.items()
        }


class Router:
    def __init__(
        self,
        config: RouterConfig,
        upstreams: Upstreams,
        health_interval_s: float = 1.0,
        health_timeout_s: float = 1.0,
        ready_when: ReadyWhen = "all",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = upstreams
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.ready_when = ready_when
        self.clock = clock
        self.metrics = RouterMetrics(
            GroupGauges(
                up=lambda: {s.group.name: s.up and not s.leaving for s in self._all_states()},
                outstanding=lambda: {s.group.name: s.backlog.count for s in self._all_states()},
                slo=lambda: dict(self.config.slo_seconds),
                rates=lambda: {m: mm.arrivals.rate() for m, mm in self.metrics.models.items()},
            )
        )
        self.closing: str | None = None
        self.states: dict[tuple[str, str], GroupState] = {}
        self.leaving: list[GroupState] = []
        self.by_model: dict[str, list[GroupState]] = {}
        self._model_metrics: dict[str, ModelMetrics] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fast_requests = 0  # sent on the fast path (router_fast); for tests and debugging
        self.config = config
        self.apply(config)

    # ----------------------------------------------------------------- configuration
    def apply(self, config: RouterConfig) -> list[GroupState]:
        """Serve `config` from now on; returns the groups that are new (not yet probed)."""
        states: dict[tuple[str, str], GroupState] = {}
        fresh = []
        returning = {s.group.key: s for s in self.leaving}
        for g in config.groups:
            st = self.states.get(g.key) or returning.get(g.key)
            if st is not None and st.leaving:  # back in the plan
                st.leaving = False
                self.leaving.remove(st)
            if st is None or st.backlog.pp != g.pp:
                st = GroupState(g, Backlog(g.pp))
                fresh.append(st)
            st.set_group(g)
            states[g.key] = st
        for key, st in self.states.items():
            if key not in states:
                st.leaving = True
                self.leaving.append(st)
                log.info("group %s (%s) left the plan; draining", st.group.name, st.group.url)
        self.states = states
        self.by_model = {m: [states[g.key] for g in hosts] for m, hosts in config.hosts.items()}
        self._model_metrics = {m: self.metrics.model(m) for m in config.hosts}
        self.config = config
        if config.unrouted:
            log.warning("plan groups without an address (out of rotation): %s", config.unrouted)
        return fresh

    def _all_states(self) -> list[GroupState]:
        """Leaving groups first: a current group of the same name wins in per-group gauges."""
        return [*self.leaving, *self.states.values()]

    # ----------------------------------------------------------------- health
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self.closing is not None:
            return False
        if self.ready_when == "any":
            return any(s.up for s in self.states.values())
        return all(self._live_hosts(m) for m in self.by_model)

    def not_ready_reason(self) -> str:
        if self.closing is not None:
            return self.closing
        down = [m for m in sorted(self.by_model) if not self._live_hosts(m)]
        if self.ready_when == "any" or len(down) == len(self.by_model):
            return "no group is reachable: " + "; ".join(
                f"{s.group.name} ({s.group.url}): {s.why_down}" for s in self.states.values()
            )
        return f"no live group hosts model(s) {', '.join(down)}"

    def model_ready(self, model: str) -> bool:
        return self.closing is None and any(s.up for s in self._live_hosts(model))

    def _live_hosts(self, model: str) -> list[GroupState]:
        """Live groups hosting `model` in the plan, else live ones that left it (fallback)."""
        live = [s for s in self._hosts(model) if s.up]
        return live or self._fallback(model)

    def mark_down(self, st: GroupState, why: str) -> None:
        if st.up:
            log.warning("group %s (%s) out of rotation: %s", st.group.name, st.group.url, why)
        st.up = False
        st.why_down = why

    async def probe(self, st: GroupState) -> None:
        why = await probe_ready(self.upstreams, st.group.url, self.health_timeout_s)
        if why is None:
            if not st.up:
                log.info("group %s (%s) in rotation", st.group.name, st.group.url)
            st.up = True
            st.why_down = ""
            st.slow_probes = 0
            return
        if why.startswith("no answer within"):
            # A slow answer is not a dead group (a busy leader on a loaded machine): only
            # SLOW_PROBES in a row take it out; a refused connection or a 503 does at once.
            self.metrics.hop_timeouts.labels(st.group.name).inc()
            st.slow_probes += 1
            if st.up and st.slow_probes < SLOW_PROBES:
                return
        self.mark_down(st, why)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(s) for s in list(self.states.values())))

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.probe_all()
            await asyncio.gather(*(self.probe(s) for s in self.leaving))
            self.leaving = [s for s in self.leaving if self._still_needed(s)]

    def _still_needed(self, st: GroupState) -> bool:
        """A group that left the plan stays while requests to it are outstanding, and while it
        is live and some model it hosts has no live group in the new plan yet (a rollout:
        the new groups are still starting; make before break)."""
        if st.backlog.count > 0:
            return True
        if not st.up:
            return False
        return any(
            not any(h.up for h in self.by_model.get(m, ())) and m in self.by_model
            for m in st.candidates
        )

    def _fallback(self, model: str) -> list[GroupState]:
        """Live groups that left the plan but still host `model` (used only while no group
        of the current plan that hosts it is live)."""
        return [s for s in self.leaving if s.up and model in s.candidates]

    # ----------------------------------------------------------------- lookup
    def _hosts(self, model: str) -> list[GroupState]:
        hosts = self.by_model.get(model)
        if hosts is None:
            raise ModelNotFound(
                f"unknown model '{model}' (this ModelSet serves: "
                f"{', '.join(self.config.models) or 'nothing'})"
            )
        return hosts

    def check_model(self, model: str) -> None:
        self._hosts(model)

    def _why_unavailable(self, model: str, hosts: list[GroupState], tried: list[str]) -> str:
        if self.closing is not None:
            return self.closing
        if not hosts:
            return (
                f"no live group hosts model '{model}': its groups have no address "
                f"(unrouted: {', '.join(self.config.unrouted)})"
            )
        states = "; ".join(
            f"{s.group.name} ({s.group.url}): {s.why_down or 'in rotation'}" for s in hosts
        )
        extra = f" (tried: {', '.join(tried)})" if tried else ""
        return f"no live group hosts model '{model}'{extra}: {states}"

    # ----------------------------------------------------------------- inference
    async def infer(
        self,
        model: str,
        path: str,
        body: bytes,
        headers: bytes,
        rows: int,
        arrival: float,
    ) -> Reply:
        """Send one inference request to the best group; the group's reply, or a
        ServingError the router decided on (404, 429, 503, 504). `headers`: the header lines
        to pass on, encoded (b"Name: value\r\n" each)."""
        hosts = self._hosts(model)
        mm = self._model_metrics[model]
        mm.requests += 1
        mm.arrivals.add()
        try:
            return await self._dispatch(model, hosts, mm, path, body, headers, rows, arrival)
        except asyncio.CancelledError:  # the client went away
            mm.failed["cancelled"] += 1
            raise
        except ServingError:
            raise  # counted where it was decided
        except Exception:
            mm.failed["internal"] += 1
            raise

    async def _dispatch(
        self,
        model: str,
        hosts: list[GroupState],
        mm: ModelMetrics,
        path: str,
        body: bytes,
        headers: bytes,
        rows: int,
        arrival: float,
        tried: list[GroupState] | None = None,
    ) -> Reply:
        """`tried`: groups that failed this request already (the fast path's retry state)."""
        slo = self.config.slo_seconds[model]
        bound = self.config.admission_seconds[model]
        deadline = arrival + bound
        tried = [] if tried is None else tried
        while True:
            if self.closing is not None:
                mm.rejected["unavailable"] += 1
                raise Draining(self.closing)  # 503, and REST closes the connection
            pairs = [(s.candidates[model], s) for s in hosts if s.up and s not in tried]
            if not pairs:
                pairs = [(s.candidates[model], s) for s in self._fallback(model) if s not in tried]
            if not pairs:
                mm.rejected["unavailable"] += 1
                raise Unavailable(
                    self._why_unavailable(model, hosts, [s.group.name for s in tried])
                )
            now = self.clock()
            choice = choose((c for c, _ in pairs), rows, now)
            if not admit(choice, deadline):
                mm.rejected["slo"] += 1
                best = choice.completion - arrival
                raise Rejected(
                    f"model '{model}': rejected by the router's SLO admission: the soonest a "
                    f"group can finish it is {best * 1000:.1f} ms after arrival > "
                    f"{admission_limit_text(slo, bound)} ({self._backlogs(pairs)})"
                )
            cand = choice.candidate
            assert cand is not None
            st = next(s for c, s in pairs if c is cand)
            if tried:
                mm.retries += 1
            ticket = st.backlog.commit(now, cand.served(rows))
            try:
                reply = await self.upstreams.request("POST", st.group.url + path, body, headers)
            except (NotAccepted, Broken) as e:
                self.mark_down(st, str(e))
                tried.append(st)
                continue
            except HopTimeout as e:
                self.metrics.hop_timeouts.labels(st.group.name).inc()
                mm.failed["timeout"] += 1
                raise self.gateway_timeout(st, e) from None
            finally:
                st.backlog.release(ticket, self.clock())
            if reply.status == 503:  # the group does not accept it (stopping, unhealthy)
                self.mark_down(st, f"answered 503: {self.error_text(reply)}")
                tried.append(st)
                continue
            st.slow_probes = 0
            self._record(mm, reply.status, arrival, slo)
            return reply

    def best_admitted(
        self, model: str, hosts: list[GroupState], rows: int, arrival: float
    ) -> tuple[GroupState | None, Sequence[float], float]:
        """`_dispatch`'s first choice, without side effects: the live group that would finish
        the request soonest if it meets the SLO there, its stage latencies, and now. (None,
        (), now) when `_dispatch` would refuse it or fall back to groups leaving the plan."""
        now = self.clock()
        live = [s for s in hosts if s.up]
        if not live:
            return None, (), now
        choice = choose([s.candidates[model] for s in live], rows, now)
        cand = choice.candidate
        if cand is None or not admit(choice, arrival + self.config.admission_seconds[model]):
            return None, (), now
        for s in live:
            if s.candidates[model] is cand:
                return s, cand.served(rows), now
        raise AssertionError("the chosen candidate is a live host's")

    def model_metrics(self, model: str) -> ModelMetrics:
        return self._model_metrics[model]

    @staticmethod
    def gateway_timeout(st: GroupState, e: HopTimeout) -> GatewayTimeout:
        return GatewayTimeout(f"group {st.group.name} ({st.group.url}): {e}")

    @staticmethod
    def error_text(reply: Reply) -> str:
        return _error_text(reply)

    def _record(self, mm: ModelMetrics, status: int, arrival: float, slo: float) -> None:
        if status == 200:
            latency = self.clock() - arrival
            mm.success += 1
            mm.observe(latency)
            if latency <= slo:
                mm.within_slo += 1
        elif status == 429:
            mm.rejected["group"] += 1
        elif status < 500:
            mm.failed["invalid"] += 1
        else:
            mm.failed["group"] += 1

    def record_invalid(self, model: str) -> None:
        """A request the router itself refused as malformed (counted like a group's 4xx)."""
        mm = self._model_metrics.get(model)
        if mm is not None:
            mm.requests += 1
            mm.arrivals.add()
            mm.failed["invalid"] += 1

    @staticmethod
    def _backlogs(pairs: list[tuple[Candidate, GroupState]]) -> str:
        return ", ".join(f"{s.group.name}: {s.backlog.count} outstanding" for _, s in pairs)

    # ----------------------------------------------------------------- other requests
    async def forward(self, model: str, method: str, path: str, body: bytes | None = None) -> Reply:
        """A metadata/config/stats request: the first live group hosting `model` answers."""
        hosts = self._hosts(model)
        tried: list[str] = []
        for st in self._live_hosts(model):
            try:
                reply = await self.upstreams.request(method, st.group.url + path, body)
            except (NotAccepted, Broken) as e:
                self.mark_down(st, str(e))
                tried.append(st.group.name)
                continue
            except HopTimeout as e:
                self.metrics.hop_timeouts.labels(st.group.name).inc()
                raise GatewayTimeout(f"group {st.group.name} ({st.group.url}): {e}") from None
            return reply
        raise Unavailable(self._why_unavailable(model, hosts, tried))

    async def forward_each(self, model: str, method: str, path: str, body: bytes) -> list[Reply]:
        """Send to every live group hosting `model` (repository load/unload)."""
        replies = []
        hosts = [s for s in self._hosts(model) if s.up]
        if not hosts:
            raise Unavailable(self._why_unavailable(model, self._hosts(model), []))
        for st in hosts:
            try:
                replies.append(await self.upstreams.request(method, st.group.url + path, body))
            except (NotAccepted, Broken, HopTimeout) as e:
                raise Unavailable(f"group {st.group.name} ({st.group.url}): {e}") from None
        return replies

    async def all_stats(self) -> dict[str, Any]:
        """Statistics of every model, summed over the live groups that host it."""
        merged: dict[str, dict[str, Any]] = {}
        for st in list(self.states.values()):
            if not st.up:
                continue
            try:
                reply = await self.upstreams.request("GET", st.group.url + "/v2/models/stats")
                doc = json.loads(reply.body) if reply.status == 200 else {}
            except (NotAccepted, Broken, HopTimeout, ValueError):
                continue
            for entry in doc.get("model_stats", []):
                name = entry.get("name")
                if isinstance(name, str):
                    merged[name] = sum_stats(merged[name], entry) if name in merged else entry
        return {"model_stats": [merged[m] for m in sorted(merged)]}

    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        out = []
        for model in self.config.models:
            ready = self.model_ready(model)
            if ready_only and not ready:
                continue
            out.append(
                {
                    "name": model,
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": "" if ready else "no live group hosts it",
                }
            )
        return out

    # ----------------------------------------------------------------- lifecycle
    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self, reason: str = "the router is shutting down") -> None:
        self.closing = reason

    def outstanding(self) -> int:
        return sum(s.backlog.count for s in self._all_states())

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most timeout_s) until every request sent to a group is answered."""
        end = self.clock() + timeout_s
        while self.outstanding() and self.clock() < end:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.upstreams.close()


def _error_text(reply: Reply) -> str:
    try:
        doc = json.loads(reply.body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    except ValueError:
        pass
    return reply.body[:200].decode("utf-8", "replace")


def sum_stats(a: Any, b: Any, key: str = "") -> Any:
    """Sum two Triton statistics entries of one model: counts and durations add up,
    last_inference is the later one, names, versions and lists come from the first."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = {k: sum_stats(v, b[k], k) if k in b else v for k, v in a.items()}
        return out | {k: v for k, v in b.items() if k not in a}
    if isinstance(a, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return a
    return max(a, b) if key == "last_inference" else a + b
