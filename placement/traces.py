"""Trace readers: turn a recorded trace into a Workload.

Formats (`spec.workload.trace.format`):

- `csv`: one request per row, `time,model[,slo]` (see docs/placement.md, "Trace files"):
  time in seconds, the model's name, optionally the request's own SLO in seconds (empty:
  the model's SLO); an optional header line; blank lines and lines starting with '#' are
  skipped. With rateScale = cvScale = 1 the requests are replayed exactly; otherwise they
  are re-fitted like an Azure 2021 trace. A valid file is read by pyarrow's CSV reader
  (1 M rows in well under a second); a file it rejects is re-read line by line to name the
  bad line.
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

All returned workloads are rebased so that startSeconds becomes time 0. Without
durationSeconds the workload covers the trace's whole span after startSeconds; with it, the
requests cut off are reported in the workload's notes (and by `statmux plan`).
"""

from __future__ import annotations

import csv
import io
import re
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


CSV_COLUMNS = ("time", "model", "slo")


def read_csv_trace(path: str | Path, model_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(times, model ids) of a `time,model[,slo]` CSV, sorted by time."""
    times, ids, _ = read_csv_requests(path, model_names)
    return times, ids


def read_csv_requests(
    path: str | Path, model_names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(times, model ids, per-request SLO or None) of a CSV trace, sorted by time; the SLO
    is NaN where the row leaves it empty (the model's SLO applies)."""
    p = Path(path)
    found = _read_csv_fast(p, model_names)
    if found is None:
        found = _read_csv_lines(p, model_names)
    times, ids, slo = found
    order = np.argsort(times, kind="stable")
    return times[order], ids[order], None if slo is None else slo[order]


_COMMENT = re.compile(rb"(?m)^[ \t]*#[^\n]*(?:\n|$)")


def _read_csv_fast(
    p: Path, model_names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """pyarrow's reader; None when the file needs the line-by-line reader's diagnosis."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    try:
        data = p.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read trace {p}: {err.strerror}") from None
    if b"#" in data:
        data = _COMMENT.sub(b"", data)
    first = data.lstrip().split(b"\n", 1)[0]
    if not first.strip():
        return None
    columns = first.count(b",") + 1
    if columns not in (2, 3):
        return None
    header = not _is_number(first.split(b",", 1)[0].decode(errors="replace").strip())
    names = list(CSV_COLUMNS[:columns])
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=int(header)),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
        )
        times = pc.cast(pc.utf8_trim_whitespace(table["time"]), pa.float64()).to_numpy()
        slo = None
        if columns == 3:
            text = pc.utf8_trim_whitespace(table["slo"])
            nulls = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
            slo = pc.cast(nulls, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if times.size == 0 or not np.all(np.isfinite(times)) or (times < 0).any():
        return None
    if slo is not None and not np.all(np.isnan(slo) | (np.isfinite(slo) & (slo > 0))):
        return None
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(table["model"])).combine_chunks()
    index = {n: i for i, n in enumerate(model_names)}
    seen = encoded.dictionary.to_pylist()
    if any(n not in index for n in seen):
        return None
    to_id = np.array([index[n] for n in seen], dtype=np.int32)
    ids = to_id[encoded.indices.to_numpy(zero_copy_only=False)]
    return times.astype(np.float64), ids, None if slo is None else slo.astype(np.float64)


def _read_csv_lines(
    p: Path, model_names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Line by line, naming the first bad line in a SpecError."""
    index = {n: i for i, n in enumerate(model_names)}
    times: list[float] = []
    ids: list[int] = []
    slos: list[float] = []
    columns = 0
    first = True
    for line, row in _rows(p):
        if first and not _is_number(row[0]):
            first = False
            continue  # a header line
        first = False
        if columns == 0:
            columns = len(row)
        if len(row) not in (2, 3) or len(row) != columns:
            raise SpecError(
                f"{p}:{line}: expected {columns if columns in (2, 3) else 2} fields "
                f"'time,model[,slo]' (seconds, model name, optional SLO seconds), "
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
        if columns == 3:
            slos.append(_slo_field(row[2], p, line))
        times.append(t)
        ids.append(index[row[1]])
    if not times:
        raise SpecError(f"{p}: the trace has no requests (rows 'time,model[,slo]')")
    slo = np.asarray(slos, dtype=np.float64) if columns == 3 else None
    return np.asarray(times, dtype=np.float64), np.asarray(ids, dtype=np.int32), slo


def _slo_field(text: str, p: Path, line: int) -> float:
    if not text:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise SpecError(
            f"{p}:{line}: slo must be a positive number of seconds (or empty for the model's "
            f"SLO), got {text!r}"
        )
    return value


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
def _span(times: np.ndarray, start: float) -> float:
    """Seconds from `start` to just past the last time (at least 1 s)."""
    last = float(times.max()) if times.size else start
    return max(float(np.nextafter(last - start, np.inf)), 1.0)


def _cut_note(trace: TraceRef, kept: int, total: int, duration: float, span: float) -> list[str]:
    if kept >= total:
        return []
    return [
        f"spec.workload.durationSeconds {duration:g} s keeps {kept} of the {total} requests "
        f"of {trace.path} after startSeconds (the trace spans {span:g} s); leave "
        "durationSeconds out to plan on the whole trace"
    ]


def fit_trace(
    trace: TraceRef,
    model_names: list[str],
    duration: float | None,
    azure2019_cv: Azure2019Cv = "alpaserve",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rates, CVs, window edges) fitted per model and window, before rateScale/cvScale.

    rates and CVs have shape (models, windows); edges are relative to startSeconds.
    `duration` None: the trace's span after startSeconds."""
    rates, cvs, edges, _ = _fit(trace, model_names, duration, azure2019_cv)
    return rates, cvs, edges


def _fit(
    trace: TraceRef,
    model_names: list[str],
    duration: float | None,
    azure2019_cv: Azure2019Cv,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    t0 = trace.start_seconds
    n = len(model_names)
    if trace.format == "azure2019":
        _, counts = read_azure2019(trace.path)
        span = counts.shape[1] * 60.0 - t0
        if span <= 0:
            raise SpecError(
                f"spec.workload.trace.startSeconds {t0:g} is past the end of {trace.path} "
                f"({counts.shape[1]} minutes)"
            )
        length = span if duration is None else duration
        edges = window_edges(length, trace.window_seconds)
        rates, cvs = _fit_azure2019(trace, n, length, edges, azure2019_cv, counts)
        total = int(counts[:, int(t0 // 60) :].sum())
        kept = int(counts[:, int(t0 // 60) : int((t0 + length) // 60)].sum())
        return rates, cvs, edges, _cut_note(trace, kept, total, length, span)
    if trace.format == "csv":
        times, ids = read_csv_trace(trace.path, model_names)
        funcs = [times[ids == m] for m in range(n)]
    else:
        _, funcs = read_azure2021(trace.path)
    after = [f[f >= t0] for f in funcs]
    span = _span(np.concatenate(after) if after else np.zeros(0), t0)
    length = span if duration is None else duration
    sliced = [f[f < t0 + length] - t0 for f in after]
    kept, total = sum(f.size for f in sliced), sum(f.size for f in after)
    notes = _cut_note(trace, kept, total, length, span)
    edges = window_edges(length, trace.window_seconds)
    if trace.format == "csv":
        per_model = sliced
    else:
        sliced = [f for f in sliced if f.size]  # idle functions take no stripe slot
        to_model = stripe(len(sliced), n)
        per_model = [
            np.sort(np.concatenate([f for f, m in zip(sliced, to_model, strict=True) if m == i]))
            if (to_model == i).any()
            else np.zeros(0)
            for i in range(n)
        ]
    rates, cvs = _fit_from_arrivals(per_model, edges)
    return rates, cvs, edges, notes


def trace_workload(
    trace: TraceRef,
    model_names: list[str],
    duration: float | None,
    seed: int,
    azure2019_cv: Azure2019Cv = "alpaserve",
) -> Workload:
    """The workload of `spec.workload.trace`, over [startSeconds, startSeconds + duration);
    `duration` None: the trace's whole span after startSeconds."""
    if trace.format == "csv" and trace.rate_scale == 1.0 and trace.cv_scale == 1.0:
        t0 = trace.start_seconds
        times, ids, slo = read_csv_requests(trace.path, model_names)
        after = times >= t0
        span = _span(times[after], t0)
        length = span if duration is None else duration
        keep = after & (times < t0 + length)
        notes = _cut_note(trace, int(keep.sum()), int(after.sum()), length, span)
        return Workload(
            list(model_names),
            times[keep] - t0,
            ids[keep],
            length,
            slo=None if slo is None else slo[keep],
            notes=notes,
        )
    rates, cvs, edges, notes = _fit(trace, model_names, duration, azure2019_cv)
    wl = regenerate(model_names, rates * trace.rate_scale, cvs * trace.cv_scale, edges, seed)
    wl.notes = notes
    return wl


def _fit_azure2019(
    trace: TraceRef,
    n: int,
    duration: float,
    edges: np.ndarray,
    cv_mode: Azure2019Cv,
    counts: np.ndarray,
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
