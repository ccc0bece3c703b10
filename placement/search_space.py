"""What every placement policy searches over: the problem, group shapes and memory fits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ModelProfile, ParallelConfig
from statmux.placement.simulator import Simulator
from statmux.placement.workload import Workload

Progress = Callable[[str], None]

# Group sizes the search considers: powers of two up to 16 GPUs, like AlpaServe.
GROUP_SIZES = (1, 2, 4, 8, 16)


@dataclass
class SearchProblem:
    """Models, their profiles and SLOs, the expected workload and the cluster."""

    models: list[str]
    profiles: dict[str, ModelProfile]
    slo: dict[str, float]
    workload: Workload
    num_gpus: int
    budget: float  # weight bytes per GPU
    gpus_per_node: int = 8
    max_batch_size: int | dict[str, int] = 1  # one cap, or one per model
    progress: Progress | None = None
    # The full workload for the final evaluation, when `workload` is a sample of it.
    eval_workload: Workload | None = None
    _sims: dict[tuple[str, ...], Simulator] = field(default_factory=dict, repr=False)
    _rates: dict[str, float] | None = field(default=None, repr=False)
    _eval_sim: Simulator | None = field(default=None, repr=False)
    _whole: SearchProblem | None = field(default=None, repr=False)
    # (model, config) -> value; the search asks these questions millions of times.
    _demand: dict[tuple[str, ParallelConfig], float] = field(default_factory=dict, repr=False)
    _bytes: dict[tuple[str, ParallelConfig], float] = field(default_factory=dict, repr=False)
    _columns: dict[ParallelConfig, tuple[dict[str, float], dict[str, float]]] = field(
        default_factory=dict, repr=False
    )
    simulations: int = 0

    # ------------------------------------------------------------------ simulation
    def simulator(self, models: Iterable[str] | None = None) -> Simulator:
        """A simulator over the whole workload, or over the requests of a model subset."""
        key = tuple(sorted(models)) if models is not None else ()
        sim = self._sims.get(key)
        if sim is None:
            if key:
                sim = self.simulator().restricted(key)
            else:
                sim = Simulator(self.profiles, self.workload, self.slo, self.max_batch_size)
            if len(self._sims) > 256:  # component simulators come and go during a search
                self._sims = {(): self._sims[()]} if () in self._sims else {}
            self._sims[key] = sim
        return sim

    def evaluator(self) -> Simulator:
        """The simulator over the full workload, for reporting a chosen placement."""
        if self.eval_workload is None:
            return self.simulator()
        if self._eval_sim is None:
            self._eval_sim = Simulator(
                self.profiles, self.eval_workload, self.slo, self.max_batch_size
            )
        return self._eval_sim

    def evaluator_with(self, admission_seconds: dict[str, float]) -> Simulator:
        """The evaluator with admission bounds below some models' SLO (a Plan's
        admissionSeconds); not cached: a re-plan scores one placement with them."""
        if not admission_seconds:
            return self.evaluator()
        return Simulator(
            self.profiles,
            self.eval_workload or self.workload,
            self.slo,
            self.max_batch_size,
            admission_seconds=admission_seconds,
        )

    def on_whole_workload(self) -> SearchProblem:
        """This problem on the whole workload when it searches a sample (else itself), for
        the final refinement; its simulations are counted here."""
        if self.eval_workload is None:
            return self
        whole = self._whole
        if whole is None:
            whole = self._whole = replace(
                self,
                workload=self.eval_workload,
                eval_workload=None,
                progress=None,
                simulations=0,
                _sims={},
                _rates=None,
                _eval_sim=None,
                _demand={},
                _columns={},
                _whole=None,
            )
            if self._eval_sim is not None:
                whole._sims[()] = self._eval_sim
        return whole

    def attainment(self, placement: Placement, models: Iterable[str] | None = None) -> float:
        self.simulations += 1
        return self.simulator(models).attainment(placement)

    def good_per_model(self, placement: Placement) -> np.ndarray:
        self.simulations += 1
        return self.simulator().good_per_model(placement)

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    # ------------------------------------------------------------------ demand
    @property
    def rates(self) -> dict[str, float]:
        if self._rates is None:
            r = self.workload.rates()
            self._rates = {m: float(r[i]) for i, m in enumerate(self.workload.model_names)}
        return self._rates

    def demand(self, model: str, config: ParallelConfig) -> float:
        """Busy seconds per second of the model's bottleneck stage on one group."""
        key = (model, config)
        d = self._demand.get(key)
        if d is None:
            cp = self.profiles[model].configs.get(config)
            # a model without the config never goes on such a group: no load there
            d = 0.0 if cp is None else self.rates.get(model, 0.0) * cp.max_stage(1)
            self._demand[key] = d
        return d

    # ------------------------------------------------------------------ memory
    def bytes_per_gpu(self, model: str, config: ParallelConfig) -> float:
        key = (model, config)
        b = self._bytes.get(key)
        if b is None:
            cp = self.profiles[model].configs.get(config)
            b = self._bytes[key] = float("inf") if cp is None else cp.weight_bytes_per_gpu
        return b

    def per_model(self, config: ParallelConfig) -> tuple[dict[str, float], dict[str, float]]:
        """(demand, bytes per GPU) of every model on `config` (cached): the packing asks
        for whole columns, once per partition."""
        cached = self._columns.get(config)
        if cached is None:
            cached = (
                {m: self.demand(m, config) for m in self.models},
                {m: self.bytes_per_gpu(m, config) for m in self.models},
            )
            self._columns[config] = cached
        return cached

    def fits_alone(self, model: str, config: ParallelConfig) -> bool:
        return self.bytes_per_gpu(model, config) <= self.budget

    def can_add(self, group: Group, model: str, used: float | None = None) -> bool:
        if model in group.models:
            return False
        if used is None:
            used = sum(self.bytes_per_gpu(m, group.config) for m in group.models)
        return used + self.bytes_per_gpu(model, group.config) <= self.budget


def configs_of_size(size: int, profiles: Iterable[ModelProfile]) -> list[ParallelConfig]:
    """Every (pp, tp) with pp·tp = size that every profile covers."""
    shared: set[ParallelConfig] | None = None
    for p in profiles:
        cs = {c for c in p.configs if c.gpus == size}
        shared = cs if shared is None else shared & cs
    return sorted(shared or ())


def uniform_groups(num_gpus: int, config: ParallelConfig) -> list[Group]:
    """Split the GPUs into groups of one config; leftover GPUs form smaller power-of-two
    groups (profiles cover power-of-two sizes), keeping tp where it fits."""
    n, rest = divmod(num_gpus, config.gpus)
    groups = [Group(config) for _ in range(n)]
    size = config.gpus
    while rest:
        while size > rest:
            size //= 2
        tp = min(config.tp, size)
        groups.append(Group(ParallelConfig(size // tp, tp)))
        rest -= size
    return groups


def sample_workload(workload: Workload, max_requests: int, chunks: int = 12) -> Workload:
    """At most ~max_requests requests from `chunks` windows spread over the trace.

    Each window keeps its own bursts; windows are laid end to end, so the sample is a
    shorter trace with the same mix of quiet and busy periods. Search runs on the sample,
    the chosen placement is reported on the full trace.
    """
    n = len(workload.arrivals)
    if n <= max_requests:
        return workload
    span = workload.duration * max_requests / n / chunks
    stride = workload.duration / chunks
    parts_t, parts_m, rows = [], [], []
    for i in range(chunks):
        t0 = workload.start + i * stride
        lo, hi = np.searchsorted(workload.arrivals, [t0, t0 + span])
        parts_t.append(workload.arrivals[lo:hi] - t0 + i * span)
        parts_m.append(workload.model_ids[lo:hi])
        rows.append(np.arange(lo, hi))
    slo = None if workload.slo is None else workload.slo[np.concatenate(rows)]
    return Workload(
        list(workload.model_names),
        np.concatenate(parts_t),
        np.concatenate(parts_m),
        duration=span * chunks,
        slo=slo,
    )


def request_counts(workload: Workload) -> np.ndarray:
    """Requests per model, indexed like workload.model_names."""
    return np.bincount(workload.model_ids, minlength=len(workload.model_names))


class Deadline:
    """A soft time budget for anytime searches."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        if self.seconds is None:
            return float("inf")
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0
