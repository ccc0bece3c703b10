"""Trace readers: turn a recorded trace into a Workload.

Formats (`spec.workload.trace.format`):

- `csv`: one request per row, `time,model` (time in seconds; an optional header line;
  blank lines and lines starting with '#' are skipped). With rateScale = cvScale = 1 the
  requests are replayed exactly; otherwise they are re-fitted like an Azure 2021 trace.
- `azure2019`: Azure Functions 2019 (`invocations_per_function_md.anon.dNN.csv`): columns
  HashOwner, HashApp, HashFunction, Trigger, then per-minute invocation counts "1".."1440".
- `azure2021`: Azure Functions 2021 (`AzureFunctionsInvocationTraceForTwoWeeksJan2021`):
  columns app, func, end_timestamp, duration (seconds); a request starts at
  end_timestamp - duration.

Azure traces are converted the way AlpaServe does: functions with invocations in the chosen
slice [startSeconds, startSeconds + durationSeconds) are striped onto the models
(function i -> model i mod n, in order of first appearance in the file); the slice is cut
into windows of windowSeconds; per model and window a Gamma process is fitted; rate and CV
are multiplied by rateScale and cvScale; arrivals are re-drawn from those Gamma processes
with the workload seed (one random stream per model and window).
- rate = count / window length.
- 2021 (and re-fitted csv): CV = std / mean of the inter-arrival times (CV 1 with fewer
  than 3 arrivals; at least MIN_CV).
- 2019 has only per-minute counts: like AlpaServe, the base CV is 1 (so the CV is cvScale),
  unless `azure2019_cv="counts"`, which estimates it from the dispersion of the per-minute
  counts (CV² ≈ variance / mean for a renewal process).

All returned workloads are rebased so that startSeconds becomes time 0.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from statmux.placement.spec import SpecError, TraceRef
from statmux.placement.workload import Workload, gamma_arrivals, merge_arrivals, model_rng

Azure2019Cv = Literal["alpaserve", "counts"]


# --------------------------------------------------------------------------- file reading
def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank, non-comment CSV row."""
    try:
        f = path.open(newline="")
    except OSError as err:
        raise SpecError(f"cannot read trace {path}: {err.strerror}") from None
    with f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                yield reader.line_num, [c.strip() for c in row]
        except (csv.Error, UnicodeDecodeError) as err:
            raise SpecError(f"{path}:{reader.line_num}: not a CSV file: {err}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_trace(path: str | Path, model_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(times, model ids) of a `time,model` CSV, sorted by time."""
    p = Path(path)
    index = {n: i for i, n in enumerate(model_names)}
    times: list[float] = []
    ids: list[int] = []
    first = True
    for line, row in _rows(p):
        if first and not _is_number(row[0]):
            first = False
            continue  # a header line
        first = False
        if len(row) != 2:
            raise SpecError(
                f"{p}:{line}: expected 2 fields 'time,model' (time in seconds), "
                f"got {len(row)}: {','.join(row)!r}"
            )
        try:
            t = float(row[0])
        except ValueError:
            raise SpecError(
                f"{p}:{line}: time must be a number of seconds, got {row[0]!r}"
            ) from None
        if not np.isfinite(t) or t < 0:
            raise SpecError(f"{p}:{line}: time must be a finite number >= 0, got {row[0]!r}")
        if row[1] not in index:
            raise SpecError(
                f"{p}:{line}: unknown model {row[1]!r}; the ModelSet has {', '.join(model_names)}"
            )
        times.append(t)
        ids.append(index[row[1]])
    t_a = np.asarray(times, dtype=np.float64)
    order = np.argsort(t_a, kind="stable")
    return t_a[order], np.asarray(ids, dtype=np.int32)[order]


def read_azure2019(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(function keys, per-minute counts of shape (functions, minutes)) of an Azure 2019 file."""
    p = Path(path)
    rows = _rows(p)
    header_line, header = next(rows, (0, []))
    need = ("HashOwner", "HashApp", "HashFunction")
    missing = [c for c in need if c not in header]
    minutes = 0
    while str(minutes + 1) in header:
        minutes += 1
    if missing or minutes == 0:
        raise SpecError(
            f"{p}:{header_line or 1}: not an Azure Functions 2019 trace: expected a header with "
            "HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440 (per-minute counts)"
            + (f"; missing {', '.join(missing)}" if missing else "; no minute columns 1..N")
        )
    key_cols = [header.index(c) for c in need]
    minute_cols = [header.index(str(j)) for j in range(1, minutes + 1)]
    counts: dict[str, np.ndarray] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise SpecError(
                f"{p}:{line}: expected {len(header)} fields like the header, got {len(row)}"
            )
        try:
            c = np.array([int(row[j]) for j in minute_cols], dtype=np.int64)
        except ValueError:
            raise SpecError(f"{p}:{line}: per-minute counts must be whole numbers >= 0") from None
        if (c < 0).any():
            raise SpecError(f"{p}:{line}: per-minute counts must be whole numbers >= 0")
        key = "/".join(row[j] for j in key_cols)
        counts[key] = counts[key] + c if key in counts else c
    if not counts:
        raise SpecError(f"{p}: the Azure 2019 trace has a header but no functions")
    return list(counts), np.stack(list(counts.values()))


def read_azure2021(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """(function keys, sorted start times per function) of an Azure 2021 file."""
    p = Path(path)
    rows = _rows(p)
    header_line, header = next(rows, (0, []))
    need = ("app", "func", "end_timestamp", "duration")
    missing = [c for c in need if c not in header]
    if missing:
        raise SpecError(
            f"{p}:{header_line or 1}: not an Azure Functions 2021 trace: expected a header with "
            f"app,func,end_timestamp,duration; missing {', '.join(missing)}"
        )
    ia, ifn, ie, idur = (header.index(c) for c in need)
    starts: dict[str, list[float]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise SpecError(
                f"{p}:{line}: expected {len(header)} fields like the header, got {len(row)}"
            )
        try:
            start = float(row[ie]) - float(row[idur])
        except ValueError:
            raise SpecError(
                f"{p}:{line}: end_timestamp and duration must be numbers of seconds, "
                f"got {row[ie]!r} and {row[idur]!r}"
            ) from None
        starts.setdefault(f"{row[ia]}/{row[ifn]}", []).append(start)
    if not starts:
        raise SpecError(f"{p}: the Azure 2021 trace has a header but no invocations")
    return list(starts), [np.sort(np.asarray(v, dtype=np.float64)) for v in starts.values()]


# --------------------------------------------------------------------------- fitting
def stripe(n_functions: int, n_models: int) -> np.ndarray:
    """Model index of each function: function i -> model i mod n (AlpaServe's 'stripe')."""
    return np.arange(n_functions) % n_models


def window_edges(duration: float, window_seconds: float) -> np.ndarray:
    """Window boundaries 0, w, 2w, ..., duration (the last window may be shorter)."""
    edges = np.arange(0.0, duration, window_seconds)
    return np.append(edges, duration)


# A fitted CV of 0 (perfectly regular arrivals) would be a Gamma of infinite shape.
MIN_CV = 0.01


def fit_gamma_arrivals(arrivals: np.ndarray, length: float) -> tuple[float, float]:
    """(rate, CV) of one window's sorted arrivals; CV 1 when too few to estimate."""
    rate = arrivals.size / length
    if arrivals.size < 3:
        return rate, 1.0
    gaps = np.diff(arrivals)
    mean = float(gaps.mean())
    if mean <= 0:
        return rate, 1.0  # all at one instant: no shape information
    return rate, max(float(gaps.std()) / mean, MIN_CV)


def fit_gamma_counts(counts: np.ndarray) -> float:
    """CV estimated from per-minute counts: CV² ≈ index of dispersion (variance / mean)."""
    mean = float(counts.mean()) if counts.size else 0.0
    if counts.size < 2 or mean <= 0:
        return 1.0
    dispersion = float(counts.var(ddof=1)) / mean
    return max(float(np.sqrt(dispersion)), MIN_CV)


def regenerate(
    model_names: list[str],
    rates: np.ndarray,
    cvs: np.ndarray,
    edges: np.ndarray,
    seed: int,
) -> Workload:
    """Arrivals from per-(model, window) Gamma parameters (shape (models, windows))."""
    per_model = []
    for m in range(len(model_names)):
        parts = [
            gamma_arrivals(
                float(rates[m, w]),
                float(cvs[m, w]),
                float(edges[w]),
                float(edges[w + 1] - edges[w]),
                model_rng(seed, m, w),
            )
            for w in range(len(edges) - 1)
        ]
        per_model.append(np.concatenate(parts) if parts else np.zeros(0))
    return merge_arrivals(model_names, per_model, float(edges[-1]))


def _fit_from_arrivals(
    per_model: list[np.ndarray], edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    rates = np.zeros((len(per_model), len(edges) - 1))
    cvs = np.ones_like(rates)
    for m, arr in enumerate(per_model):
        bounds = np.searchsorted(arr, edges, side="left")
        for w in range(len(edges) - 1):
            window = arr[bounds[w] : bounds[w + 1]]
            rates[m, w], cvs[m, w] = fit_gamma_arrivals(window, float(edges[w + 1] - edges[w]))
    return rates, cvs


# --------------------------------------------------------------------------- the entry points
def fit_trace(
    trace: TraceRef,
    model_names: list[str],
    duration: float,
    azure2019_cv: Azure2019Cv = "alpaserve",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rates, CVs, window edges) fitted per model and window, before rateScale/cvScale.

    rates and CVs have shape (models, windows); edges are relative to startSeconds."""
    t0, t1 = trace.start_seconds, trace.start_seconds + duration
    edges = window_edges(duration, trace.window_seconds)
    n = len(model_names)
    if trace.format == "azure2019":
        rates, cvs = _fit_azure2019(trace, n, duration, edges, azure2019_cv)
        return rates, cvs, edges
    if trace.format == "csv":
        times, ids = read_csv_trace(trace.path, model_names)
        keep = (times >= t0) & (times < t1)
        times, ids = times[keep] - t0, ids[keep]
        per_model = [times[ids == m] for m in range(n)]
    else:
        _, funcs = read_azure2021(trace.path)
        sliced = [f[(f >= t0) & (f < t1)] - t0 for f in funcs]
        sliced = [f for f in sliced if f.size]  # idle functions take no stripe slot
        to_model = stripe(len(sliced), n)
        per_model = [
            np.sort(np.concatenate([f for f, m in zip(sliced, to_model, strict=True) if m == i]))
            if (to_model == i).any()
            else np.zeros(0)
            for i in range(n)
        ]
    rates, cvs = _fit_from_arrivals(per_model, edges)
    return rates, cvs, edges


def trace_workload(
    trace: TraceRef,
    model_names: list[str],
    duration: float,
    seed: int,
    azure2019_cv: Azure2019Cv = "alpaserve",
) -> Workload:
    """The workload of `spec.workload.trace`, over [startSeconds, startSeconds + duration)."""
    if trace.format == "csv" and trace.rate_scale == 1.0 and trace.cv_scale == 1.0:
        t0 = trace.start_seconds
        times, ids = read_csv_trace(trace.path, model_names)
        keep = (times >= t0) & (times < t0 + duration)
        return Workload(list(model_names), times[keep] - t0, ids[keep], duration)
    rates, cvs, edges = fit_trace(trace, model_names, duration, azure2019_cv)
    return regenerate(model_names, rates * trace.rate_scale, cvs * trace.cv_scale, edges, seed)


def _fit_azure2019(
    trace: TraceRef, n: int, duration: float, edges: np.ndarray, cv_mode: Azure2019Cv
) -> tuple[np.ndarray, np.ndarray]:
    field = "spec.workload.trace"
    for name, value in (
        ("startSeconds", trace.start_seconds),
        ("windowSeconds", trace.window_seconds),
    ):
        if value % 60:
            raise SpecError(
                f"{field}.{name} must be a multiple of 60 for an azure2019 trace "
                f"(it has per-minute counts); got {value:g}"
            )
    if duration % 60:
        raise SpecError(
            "spec.workload.durationSeconds must be a multiple of 60 for an azure2019 trace "
            f"(it has per-minute counts); got {duration:g}"
        )
    _, counts = read_azure2019(trace.path)
    m0, m1 = int(trace.start_seconds // 60), int((trace.start_seconds + duration) // 60)
    if m1 > counts.shape[1]:
        raise SpecError(
            f"{trace.path}: the trace covers {counts.shape[1]} minutes but the workload needs "
            f"minutes {m0}..{m1} (startSeconds {trace.start_seconds:g} + durationSeconds "
            f"{duration:g}); shorten the duration or move the start"
        )
    sliced = counts[:, m0:m1]
    sliced = sliced[sliced.sum(axis=1) > 0]
    to_model = stripe(sliced.shape[0], n)
    per_model = np.zeros((n, m1 - m0), dtype=np.int64)
    np.add.at(per_model, to_model, sliced)
    n_win = len(edges) - 1
    rates = np.zeros((n, n_win))
    cvs = np.ones((n, n_win))
    for w in range(n_win):
        a, b = int(edges[w] // 60), int(edges[w + 1] // 60)
        window = per_model[:, a:b]
        rates[:, w] = window.sum(axis=1) / (edges[w + 1] - edges[w])
        if cv_mode == "counts":
            cvs[:, w] = [fit_gamma_counts(window[m]) for m in range(n)]
    return rates, cvs
