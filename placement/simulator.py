"""Discrete-event simulator of a placement serving a workload (what the search optimises).

Semantics (the parts live in separate modules):

- Workload (statmux.placement.workload): requests (arrival time, model) in arrival order;
  each has a deadline = arrival + the SLO of its model (or the Plan's tighter admission
  bound for it, admissionSeconds: scheduling then uses that bound, and a request served by
  it is within its SLO).
- Execution model (statmux.placement.sim_exec): a placement is a list of groups, each a
  chain of pp stages with a (pp, tp) config; stage k of group g is free from free[g, k].
  A batch of model m on group g takes the stage latencies profiles[m].get(pp, tp)
  .stage_latency[row(batch)] (batches between profiled sizes run at the next profiled size).
  Entering at t: s_0 = max(t, free[g, 0]), e_k = s_k + l_k, s_k = max(e_{k-1}, free[g, k]).
  A request's SLO is its model's, unless the workload gives it its own (a trace's slo column).
- Scheduling policy (statmux.placement.sim_policy): a request goes to the hosting group that
  would complete it earliest (ties: lowest group index); if that completion is later than
  its deadline it is rejected at arrival (a miss that occupies nothing). A model that no
  group hosts misses every request.
- Overheads (the profile's `overheads`, measured by the runtime's profiler): every stage
  latency becomes l_k · (1 + stageFraction · pp), plus stageSeconds on every stage that
  receives activations from a previous one (k ≥ 1); every request's completion is delayed by
  requestSeconds (front end, router), which occupies no stage but counts against the SLO.
- max_batch_size == 1: requests are served one at a time in arrival order; an admitted
  request commits free[g, k] = e_k at once, so it always meets its deadline.
- max_batch_size > 1: event-driven (see statmux.placement.sim_kernels.run_batched): admitted
  requests wait in per-group, per-model FIFO queues; whenever stage 0 of a group frees, the
  group drops queued requests that can no longer meet their deadline (misses), then runs the
  model whose head request has the earliest deadline with the largest batch (≤
  max_batch_size and ≤ the largest profiled batch of that config) that still meets the
  head's deadline. Admission at arrival uses the completion estimated as if the group's
  queue ran one request at a time at batch 1.

Outputs (SimResult): per-model request, good, rejected and dropped counts (so results of
time windows can be summed with SimResult.merge), attainment = good / requests (1.0 when
there are no requests), latency percentiles of served requests, goodput = good / duration,
and per-group utilization = busy time of the group's busiest stage / duration.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn, TypeVar

import numpy as np

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ModelProfile, ParallelConfig
from statmux.placement.sim_kernels import run_batched, run_unbatched
from statmux.placement.workload import Workload

_GroupKey = tuple[int, int, tuple[str, ...]]  # (pp, tp, the group's model list)
_V = TypeVar("_V")


def _remember(cache: dict[_GroupKey, _V], key: _GroupKey, value: _V) -> _V:
    """Store in a per-group cache; the search's groups come and go, so a full one is
    cleared rather than grown without bound."""
    if len(cache) > 65536:
        cache.clear()
    cache[key] = value
    return value


@dataclass
class SimResult:
    model_names: list[str]
    requests: np.ndarray  # per model, int64
    good: np.ndarray  # per model: finished within the SLO
    rejected: np.ndarray  # per model: rejected at arrival (includes unplaced models)
    dropped: np.ndarray  # per model: dropped from a queue (batching only)
    duration: float
    group_utilization: np.ndarray  # per group, busiest stage's busy time / duration
    latencies: np.ndarray = field(repr=False)  # seconds, of every served request

    @property
    def n_requests(self) -> int:
        return int(self.requests.sum())

    @property
    def n_good(self) -> int:
        return int(self.good.sum())

    @property
    def n_rejected(self) -> int:
        return int(self.rejected.sum())

    @property
    def n_dropped(self) -> int:
        return int(self.dropped.sum())

    @property
    def attainment(self) -> float:
        n = self.n_requests
        return self.n_good / n if n else 1.0

    @property
    def per_model_attainment(self) -> dict[str, float]:
        return {
            name: (int(g) / int(r) if r else 1.0)
            for name, g, r in zip(self.model_names, self.good, self.requests, strict=True)
        }

    @property
    def goodput(self) -> float:
        """Good requests per second."""
        return self.n_good / self.duration if self.duration > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        """q-th percentile (0..100) of served requests' latency; NaN when none was served."""
        if self.latencies.size == 0:
            return float("nan")
        return float(np.percentile(self.latencies, q))

    @property
    def latency_p50(self) -> float:
        return self.latency_percentile(50)

    @property
    def latency_p90(self) -> float:
        return self.latency_percentile(90)

    @property
    def latency_p99(self) -> float:
        return self.latency_percentile(99)

    def summary(self) -> dict[str, object]:
        return {
            "attainment": self.attainment,
            "requests": self.n_requests,
            "good": self.n_good,
            "rejected": self.n_rejected,
            "dropped": self.n_dropped,
            "goodput": self.goodput,
            "latencyP50": self.latency_p50,
            "latencyP90": self.latency_p90,
            "latencyP99": self.latency_p99,
            "perModel": self.per_model_attainment,
            "groupUtilization": [float(u) for u in self.group_utilization],
        }

    @staticmethod
    def merge(results: Sequence[SimResult]) -> SimResult:
        """Sum results of consecutive windows (same models). Utilization is
        duration-weighted when every window has the same number of groups, else empty."""
        if not results:
            raise ValueError("nothing to merge")
        names = results[0].model_names
        if any(r.model_names != names for r in results):
            raise ValueError("can only merge results over the same models")
        duration = sum(r.duration for r in results)
        shapes = {r.group_utilization.shape for r in results}
        if len(shapes) == 1 and duration > 0:
            util = sum(r.group_utilization * r.duration for r in results) / duration
        else:
            util = np.zeros(0)
        return SimResult(
            list(names),
            sum((r.requests for r in results), np.zeros(len(names), np.int64)),
            sum((r.good for r in results), np.zeros(len(names), np.int64)),
            sum((r.rejected for r in results), np.zeros(len(names), np.int64)),
            sum((r.dropped for r in results), np.zeros(len(names), np.int64)),
            duration,
            np.asarray(util, dtype=np.float64),
            np.concatenate([r.latencies for r in results]),
        )


@dataclass
class _Prepared:
    """Placement-dependent arrays for the kernels."""

    host_ptr: np.ndarray
    host_groups: np.ndarray
    npp: np.ndarray
    lat: np.ndarray  # (G, M, P) batch 1
    latb: np.ndarray | None  # (G, M, B, P), batching only
    maxb: np.ndarray | None  # (G, M)


class Simulator:
    """Simulates placements against one workload; precomputes all that does not depend on
    the placement, so that each call is one compiled pass over the requests."""

    def __init__(
        self,
        profiles: dict[str, ModelProfile],
        workload: Workload,
        slo_seconds: dict[str, float],
        max_batch_size: int | Mapping[str, int] = 1,
        event_driven: bool | None = None,
        admission_seconds: Mapping[str, float] | None = None,
    ) -> None:
        """max_batch_size: one cap for every model, or a cap per model (the Plan's
        per-model maxBatchSize). event_driven: use the queueing (batching) kernel; default:
        when some cap > 1. With every cap 1 it serves queues earliest-deadline-first instead
        of in arrival order, which is the same when all models share one SLO.
        admission_seconds: per model, a latency bound below the SLO that admission and the
        queues use instead (the Plan's admissionSeconds); every request served meets it,
        hence its SLO."""
        names = list(workload.model_names)
        if isinstance(max_batch_size, int):
            caps = dict.fromkeys(names, max_batch_size)
        else:
            caps = dict(max_batch_size)
            if no_cap := [m for m in names if m not in caps]:
                raise ValueError(f"max_batch_size has no cap for model(s) {', '.join(no_cap)}")
        if bad := {m: c for m, c in caps.items() if c < 1}:
            raise ValueError(f"max_batch_size must be >= 1 (got {bad})")
        missing = [m for m in workload.model_names if m not in slo_seconds]
        if missing:
            raise ValueError(f"slo_seconds has no SLO for model(s) {', '.join(missing)}")
        self.profiles = profiles
        self.workload = workload
        self.model_names = names
        self._max_batch = [caps[m] for m in names]
        self.max_batch_size = max(self._max_batch, default=1)  # the largest cap
        self.event_driven = self.max_batch_size > 1 if event_driven is None else event_driven
        self._index = {n: i for i, n in enumerate(self.model_names)}
        self._slo = np.array([float(slo_seconds[m]) for m in self.model_names])
        # A request's fixed overhead (front end, router) delays its completion without
        # occupying a stage: the pipeline must finish it by deadline - overhead.
        self._overhead = np.array(
            [
                profiles[m].overheads.request_seconds if m in profiles else 0.0
                for m in self.model_names
            ]
        )
        self._arrivals = np.ascontiguousarray(workload.arrivals, dtype=np.float64)
        self._model_ids = np.ascontiguousarray(workload.model_ids, dtype=np.int64)
        budget = self._slo[self._model_ids]
        if workload.slo is not None:  # a trace's per-request SLO column (NaN: the model's)
            budget = np.where(np.isnan(workload.slo), budget, workload.slo)
        if admission_seconds:
            if unknown := sorted(set(admission_seconds) - set(names)):
                raise ValueError(f"admission_seconds names unknown model(s) {', '.join(unknown)}")
            cap = np.array([admission_seconds.get(m, np.inf) for m in names])
            budget = np.minimum(budget, cap[self._model_ids])
        self._deadlines = self._arrivals + budget - self._overhead[self._model_ids]
        self._requests = np.bincount(self._model_ids, minlength=len(self.model_names)).astype(
            np.int64
        )
        self._n = int(self._arrivals.size)
        # Requests simulated so far, shared with every restricted() copy: a search's cost in
        # simulated requests (deterministic, unlike seconds), for budgets and benchmarks.
        self.work = [0]
        self._has_requests = self._requests > 0
        # Batch sizes the tables cover: 1 without queueing, else up to the largest profiled.
        largest = max(
            (max(c.batch_sizes) for p in profiles.values() for c in p.configs.values()),
            default=1,
        )
        self._b_dim = min(self.max_batch_size, largest) if self.event_driven else 1
        # Per config: (M, b_dim, pp) stage latencies (NaN: model lacks the config) and (M,)
        # usable max batch; filled lazily, once per config. Configs get small integer ids;
        # the stacked tables (all configs, padded to the largest pp) let _prepare fill a
        # placement's arrays with one fancy-indexing operation.
        self._tables: dict[ParallelConfig, tuple[np.ndarray, np.ndarray]] = {}
        self._config_ids: dict[tuple[int, int], int] = {}
        self._configs: list[ParallelConfig] = []
        self._stacked: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Per (pp, tp, model list): the config id and every hosted model's index, checked
        # once and shared with restricted() copies (which filter it by who has requests);
        # _members caches that filtered list per simulator.
        self._hosted: dict[_GroupKey, tuple[int, np.ndarray]] = {}
        self._members: dict[_GroupKey, tuple[int, np.ndarray]] = {}
        self._all_configs = False  # every profiled config has an id (see restricted)

    # ------------------------------------------------------------------ precomputation
    def _table(self, config: ParallelConfig) -> tuple[np.ndarray, np.ndarray]:
        cached = self._tables.get(config)
        if cached is not None:
            return cached
        b_dim, m_count = self._b_dim, len(self.model_names)
        table = np.full((m_count, b_dim, config.pp), np.nan)
        maxb = np.zeros(m_count, np.int64)
        # Models that share a config profile (many copies of one built-in model) share
        # their rows: computed once.
        done: dict[tuple[int, object, int], int] = {}
        for i, name in enumerate(self.model_names):
            prof = self.profiles.get(name)
            cp = prof.get(config.pp, config.tp) if prof is not None else None
            if cp is None:
                continue
            same = (id(cp), prof.overheads if prof is not None else None, self._max_batch[i])
            if same in done:
                table[i], maxb[i] = table[done[same]], maxb[done[same]]
                continue
            done[same] = i
            lat = np.asarray(cp.stage_latency, dtype=np.float64)
            if lat.ndim != 2 or lat.shape[1] != config.pp or lat.shape[0] != len(cp.batch_sizes):
                raise ValueError(
                    f"profile {name!r} config {config}: stage_latency has shape {lat.shape}, "
                    f"expected ({len(cp.batch_sizes)} batch sizes, {config.pp} stages)"
                )
            lat = prof.overheads.apply(lat) if prof is not None else lat
            sizes = np.asarray(cp.batch_sizes)
            usable = min(self._max_batch[i], int(sizes.max()))
            rows = np.searchsorted(sizes, np.arange(1, min(usable, b_dim) + 1), side="left")
            table[i, : rows.size] = lat[rows]
            maxb[i] = usable
        self._tables[config] = (table, maxb)
        return table, maxb

    def _config_id(self, config: ParallelConfig) -> int:
        ci = self._config_ids.get((config.pp, config.tp))
        if ci is None:
            self._table(config)
            ci = self._config_ids[(config.pp, config.tp)] = len(self._configs)
            self._configs.append(config)
            self._stacked = None
        return ci

    def _stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C, M, b_dim, P) latencies (0 where missing) and (C, M) usable max batch."""
        if self._stacked is None:
            p_max = max(c.pp for c in self._configs)
            shape = (len(self._configs), len(self.model_names), self._b_dim, p_max)
            lat = np.zeros(shape)
            maxb = np.zeros(shape[:2], np.int64)
            for ci, c in enumerate(self._configs):
                table, usable = self._tables[c]
                lat[ci, :, :, : c.pp] = np.nan_to_num(table)
                maxb[ci] = usable
            self._stacked = (lat, np.ascontiguousarray(lat[:, :, 0, :]), maxb)
        return self._stacked

    def _group_members(self, gi: int, group: Group, key: _GroupKey) -> tuple[int, np.ndarray]:
        """(config id, indices of the models the group serves that have requests)."""
        hosted = self._hosted.get(key)
        if hosted is None:
            hosted = _remember(self._hosted, key, self._check_hosted(gi, group))
        ci, every = hosted
        members = every[self._has_requests[every]]
        _, usable = self._tables[group.config]
        if (usable[members] == 0).any():
            self._unprofiled(gi, group, members[usable[members] == 0])
        return ci, members

    def _check_hosted(self, gi: int, group: Group) -> tuple[int, np.ndarray]:
        """(config id, indices of the group's models in this workload, each listed once);
        a model that is neither in the workload nor profiled is an error. Hosting a model
        without requests changes nothing (this also lets a simulator over a subset of the
        models take a placement of all of them), so its config is checked only when it has
        requests (_group_members)."""
        ci = self._config_id(group.config)
        every = []
        for name in dict.fromkeys(group.models):  # listed twice in one group: one replica
            mi = self._index.get(name)
            if mi is None:
                if name not in self.profiles:
                    raise ValueError(
                        f"group {gi} ({group.config}) hosts {name!r}, which is neither in "
                        f"the workload nor in the profiles"
                    )
                continue
            every.append(mi)
        return ci, np.asarray(every, dtype=np.int64)

    def _unprofiled(self, gi: int, group: Group, missing: np.ndarray) -> NoReturn:
        name = self.model_names[int(missing[0])]
        raise ValueError(
            f"group {gi} hosts {name!r} with config {group.config}, but its "
            f"profile has no such config"
            + ("" if name in self.profiles else " (no profile at all)")
        )

    def _prepare(self, placement: Placement) -> _Prepared:
        groups = placement.groups
        n_groups, n_models = len(groups), len(self.model_names)
        ci_list: list[int] = []
        member_arrays: list[np.ndarray] = []
        max_pp = 1
        for gi, group in enumerate(groups):
            cfg = group.config
            max_pp = max(max_pp, cfg.pp)
            key = (cfg.pp, cfg.tp, tuple(group.models))
            entry = self._members.get(key)
            if entry is None:
                entry = _remember(self._members, key, self._group_members(gi, group, key))
            ci_list.append(entry[0])
            member_arrays.append(entry[1])
        npp = np.fromiter((g.config.pp for g in groups), dtype=np.int64, count=n_groups)
        counts = np.fromiter((a.size for a in member_arrays), dtype=np.int64, count=n_groups)
        mi = np.concatenate(member_arrays) if member_arrays else np.zeros(0, np.int64)
        lat = np.zeros((n_groups, n_models, max_pp))
        latb = maxb = None
        if mi.size:
            gi_a = np.repeat(np.arange(n_groups), counts)
            ci_a = np.repeat(np.asarray(ci_list, dtype=np.int64), counts)
            stack_b, stack_1, stack_maxb = self._stack()
            lat[gi_a, mi] = stack_1[ci_a, mi, :max_pp]
            if self.event_driven:
                latb = np.zeros((n_groups, n_models, self._b_dim, max_pp))
                maxb = np.zeros((n_groups, n_models), np.int64)
                latb[gi_a, mi] = stack_b[ci_a, mi, :, :max_pp]
                maxb[gi_a, mi] = stack_maxb[ci_a, mi]
            # CSR of hosting groups per model; the stable sort keeps each model's groups
            # ascending, so routing ties go to the lowest group index.
            host_groups = gi_a[np.argsort(mi, kind="stable")]
        else:
            host_groups = np.zeros(0, np.int64)
        if self.event_driven and latb is None:
            latb = np.zeros((n_groups, n_models, self._b_dim, max_pp))
            maxb = np.zeros((n_groups, n_models), np.int64)
        host_ptr = np.zeros(n_models + 1, np.int64)
        np.cumsum(np.bincount(mi, minlength=n_models), out=host_ptr[1:])
        return _Prepared(host_ptr, host_groups, npp, lat, latb, maxb)

    # ------------------------------------------------------------------ simulation
    def _simulate(
        self, placement: Placement, record: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        p = self._prepare(placement)
        self.work[0] += self._n
        latencies = np.empty(self._n if record else 0)
        if p.latb is None or p.maxb is None:
            good, rejected, busy, routed = run_unbatched(
                self._arrivals, self._model_ids, self._deadlines, p.host_ptr, p.host_groups,
                p.npp, p.lat, len(self.model_names), record, latencies,
            )  # fmt: skip
            dropped = np.zeros_like(good)
        else:
            good, rejected, dropped, busy, routed = run_batched(
                self._arrivals, self._model_ids, self._deadlines, p.host_ptr, p.host_groups,
                p.npp, p.lat, p.latb, p.maxb, len(self.model_names), record, latencies,
            )  # fmt: skip
        if record:
            served = latencies >= 0
            latencies[served] += self._overhead[self._model_ids[served]]
        return good, rejected, dropped, busy, routed, latencies

    def run(self, placement: Placement) -> SimResult:
        """Full statistics of one placement."""
        good, rejected, dropped, busy, _, latencies = self._simulate(placement, record=True)
        duration = self.workload.duration
        util = busy.max(axis=1) / duration if busy.size else np.zeros(len(placement.groups))
        return SimResult(
            list(self.model_names),
            self._requests.copy(),
            good,
            rejected,
            dropped,
            duration,
            util,
            latencies[latencies >= 0],
        )

    def good_per_model(self, placement: Placement) -> np.ndarray:
        """Good requests per model (int64), without latency bookkeeping."""
        return self._simulate(placement, record=False)[0]

    def good_and_routed(self, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
        """Good requests per model and requests routed to each group (admitted or not)."""
        out = self._simulate(placement, record=False)
        return out[0], out[4]

    def attainment(self, placement: Placement) -> float:
        """Fraction of all requests that meet their SLO (1.0 for an empty workload)."""
        if self._n == 0:
            return 1.0
        return int(self.good_per_model(placement).sum()) / self._n

    def restricted(self, models: Sequence[str]) -> Simulator:
        """This simulator over only the requests of `models` (model ids unchanged, so
        per-model arrays line up). It shares the placement-independent tables, so making
        one costs a pass over the request ids: the search builds many, one per component."""
        # Register every config first so the shared config ids and stacked tables never
        # change after the copy.
        if not self._all_configs:
            for c in {c for p in self.profiles.values() for c in p.configs}:
                self._config_id(c)
            self._stack()
            self._all_configs = True
        member = np.zeros(len(self.model_names), dtype=bool)
        member[[self._index[m] for m in models if m in self._index]] = True
        rows = np.flatnonzero(member[self._model_ids])
        sub = copy.copy(self)
        sub._arrivals = self._arrivals[rows]
        sub._model_ids = self._model_ids[rows]
        sub._deadlines = self._deadlines[rows]
        sub._requests = np.where(member, self._requests, 0)
        sub._n = int(rows.size)
        sub._has_requests = sub._requests > 0
        sub._members = {}  # which group members count depends on who has requests
        sub.workload = replace(
            self.workload,
            arrivals=sub._arrivals,
            model_ids=self.workload.model_ids[rows],
            slo=None if self.workload.slo is None else self.workload.slo[rows],
        )
        return sub

    @property
    def requests_per_model(self) -> np.ndarray:
        return self._requests.copy()

    def __len__(self) -> int:
        return self._n
