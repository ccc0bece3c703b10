"""Request workloads for the simulator: who asks for which model, when.

A `Workload` is a merged, time-sorted stream of requests over a set of models. Times are
absolute seconds: `slice` keeps them as they are and records the window's `start`, so the
requests of a slice line up with those of the full workload (deadlines, logs, plots).

Synthetic arrivals follow a Gamma renewal process per model (rate λ, coefficient of
variation CV): inter-arrival times are Gamma(shape 1/CV², scale CV²/λ), so CV 1 is Poisson
and larger CVs are burstier. Each model draws from its own random stream derived from
(seed, model index), so adding a model never changes the arrivals of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from statmux.placement.spec import ModelSetSpec, SpecError


@dataclass
class Workload:
    model_names: list[str]
    arrivals: np.ndarray  # float64 seconds, ascending
    model_ids: np.ndarray  # int32, index into model_names
    duration: float  # seconds covered, from `start`
    start: float = 0.0  # absolute time of the window's start
    # Per-request SLO in seconds (a trace's optional slo column); NaN: the model's SLO.
    slo: np.ndarray | None = None
    # What the user should know about how the workload was built (e.g. a truncated trace).
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.arrivals = np.ascontiguousarray(self.arrivals, dtype=np.float64)
        self.model_ids = np.ascontiguousarray(self.model_ids, dtype=np.int32)
        if self.arrivals.shape != self.model_ids.shape:
            raise ValueError("arrivals and model_ids must have the same length")
        if self.slo is not None:
            self.slo = np.ascontiguousarray(self.slo, dtype=np.float64)
            if self.slo.shape != self.arrivals.shape:
                raise ValueError("slo must have one entry per request")

    def _slo_of(self, rows: np.ndarray | slice) -> np.ndarray | None:
        return None if self.slo is None else self.slo[rows].copy()

    def __len__(self) -> int:
        return int(self.arrivals.size)

    @property
    def end(self) -> float:
        return self.start + self.duration

    def counts(self) -> np.ndarray:
        """Requests per model (int64, in model_names order)."""
        return np.bincount(self.model_ids, minlength=len(self.model_names))

    def rates(self) -> np.ndarray:
        """Mean requests per second per model over the workload's duration."""
        return self.counts() / self.duration

    def slice(self, t0: float, t1: float) -> Workload:
        """Requests with t0 <= arrival < t1; times stay absolute, `start` becomes t0."""
        if not t1 > t0:
            raise ValueError(f"slice needs t1 > t0 (got {t0}, {t1})")
        lo, hi = np.searchsorted(self.arrivals, [t0, t1], side="left")
        return Workload(
            list(self.model_names),
            self.arrivals[lo:hi].copy(),
            self.model_ids[lo:hi].copy(),
            duration=t1 - t0,
            start=t0,
            slo=self._slo_of(slice(lo, hi)),
        )

    def windows(self, window_seconds: float) -> list[Workload]:
        """Consecutive slices of `window_seconds` (the last one may be shorter)."""
        return window_workloads(self, window_seconds)

    def select(self, models: Sequence[str]) -> Workload:
        """Only the requests of `models`, renumbered in the given order."""
        index = {n: i for i, n in enumerate(self.model_names)}
        missing = [m for m in models if m not in index]
        if missing:
            raise KeyError(f"workload has no model(s) {', '.join(missing)}")
        remap = np.full(len(self.model_names), -1, dtype=np.int32)
        for new, m in enumerate(models):
            remap[index[m]] = new
        ids = remap[self.model_ids]
        keep = ids >= 0
        return Workload(
            list(models),
            self.arrivals[keep],
            ids[keep],
            self.duration,
            self.start,
            self._slo_of(keep),
        )


def window_workloads(workload: Workload, window_seconds: float) -> list[Workload]:
    """Split into consecutive windows [start + i·w, start + (i+1)·w), e.g. for clockwork++."""
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0 (got {window_seconds})")
    n = max(1, int(np.ceil(workload.duration / window_seconds - 1e-9)))
    out = []
    for i in range(n):
        t0 = workload.start + i * window_seconds
        t1 = min(workload.end, t0 + window_seconds)
        out.append(workload.slice(t0, t1))
    return out


def merge_arrivals(
    model_names: list[str], per_model: Sequence[np.ndarray], duration: float, start: float = 0.0
) -> Workload:
    """Merge per-model arrival arrays into one time-sorted Workload."""
    arrivals = np.concatenate([np.asarray(a, dtype=np.float64) for a in per_model] or [np.zeros(0)])
    ids = np.concatenate(
        [np.full(len(a), i, dtype=np.int32) for i, a in enumerate(per_model)]
        or [np.zeros(0, np.int32)]
    )
    # A stable sort keeps equal times in model order, so the result is deterministic.
    order = np.argsort(arrivals, kind="stable")
    return Workload(list(model_names), arrivals[order], ids[order], duration, start)


def model_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per (seed, model index[, window index])."""
    return np.random.default_rng([seed, *stream])


def gamma_arrivals(
    rate: float, cv: float, start: float, duration: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival times in [start, start + duration) of a Gamma renewal process."""
    if rate <= 0 or duration <= 0:
        return np.zeros(0)
    if cv <= 0:
        raise ValueError(f"cv must be > 0 (got {cv})")
    shape = 1.0 / (cv * cv)
    scale = cv * cv / rate
    expected = rate * duration
    parts: list[np.ndarray] = []
    t = start
    end = start + duration
    # Draw in chunks a bit larger than the expected count; bursty processes may need more.
    chunk = int(expected + 5.0 * np.sqrt(expected) * max(cv, 1.0) + 16)
    while t < end:
        gaps = rng.gamma(shape, scale, size=chunk)
        times = t + np.cumsum(gaps)
        parts.append(times)
        t = float(times[-1])
    times = np.concatenate(parts)
    return times[times < end]


def split_rates(
    total: float, n: int, split: Literal["uniform", "powerLaw"] = "uniform", exponent: float = 1.0
) -> np.ndarray:
    """Per-model rates summing to `total`; powerLaw: rate_i ∝ (i+1)^-exponent."""
    if n < 1:
        raise ValueError(f"need at least one model (got {n})")
    weights: np.ndarray
    if split == "uniform":
        weights = np.ones(n)
    elif split == "powerLaw":
        weights = (np.arange(n) + 1.0) ** -float(exponent)
    else:
        raise ValueError(f"split must be 'uniform' or 'powerLaw' (got {split!r})")
    return total * weights / weights.sum()


def gamma_workload(
    model_names: list[str],
    rates: Sequence[float] | np.ndarray,
    cvs: Sequence[float] | np.ndarray | float,
    duration: float,
    seed: int = 0,
    start: float = 0.0,
) -> Workload:
    """Independent Gamma processes per model, deterministic by seed."""
    rates_a = np.asarray(rates, dtype=np.float64)
    cvs_a = np.broadcast_to(np.asarray(cvs, dtype=np.float64), rates_a.shape)
    if rates_a.shape != (len(model_names),):
        raise ValueError("need one rate per model")
    per_model = [
        gamma_arrivals(float(r), float(c), start, duration, model_rng(seed, i))
        for i, (r, c) in enumerate(zip(rates_a, cvs_a, strict=True))
    ]
    return merge_arrivals(model_names, per_model, duration, start)


# spec.workload.durationSeconds of a synthetic workload when the ModelSet gives none.
DEFAULT_DURATION = 3600.0


def workload_from_spec(spec: ModelSetSpec) -> Workload:
    """The workload a ModelSet describes: perModel, total (uniform|powerLaw) or trace.

    durationSeconds defaults to the trace's own span (a trace) or DEFAULT_DURATION."""
    w = spec.workload
    duration = w.duration_seconds or DEFAULT_DURATION
    names = [m.name for m in spec.models]
    if w.per_model is not None:
        by_name = {r.model: r for r in w.per_model}
        rates = [by_name[n].rate if n in by_name else 0.0 for n in names]
        cvs = [by_name[n].cv if n in by_name else 1.0 for n in names]
        if not any(r > 0 for r in rates):
            raise SpecError(
                "spec.workload.perModel: every rate is 0; give at least one model a rate > 0"
            )
        wl = gamma_workload(names, rates, cvs, duration, w.seed)
        where = "spec.workload.perModel"
    elif w.total is not None:
        rates_a = split_rates(w.total.rate, len(names), w.total.split, w.total.exponent)
        wl = gamma_workload(names, rates_a, w.total.cv, duration, w.seed)
        where = "spec.workload.total"
    else:
        assert w.trace is not None  # the schema guarantees exactly one source
        from statmux.placement.traces import trace_workload

        wl = trace_workload(w.trace, names, w.duration_seconds, w.seed)
        where = f"spec.workload.trace ({w.trace.path})"
    if len(wl) == 0:
        raise SpecError(
            f"{where}: the workload has no requests in {wl.duration:g} s; "
            "raise the rates or the duration"
        )
    return wl


def spec_duration(spec: ModelSetSpec) -> float:
    """The workload's length in seconds: durationSeconds, else the trace's span or
    DEFAULT_DURATION (reads the trace)."""
    if spec.workload.duration_seconds is not None:
        return spec.workload.duration_seconds
    if spec.workload.trace is None:
        return DEFAULT_DURATION
    return workload_from_spec(spec).duration
