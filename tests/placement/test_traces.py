"""Trace readers and the AlpaServe-style Gamma re-fit, on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from statmux.placement.spec import SpecError, TraceRef, parse_spec
from statmux.placement.traces import MIN_CV, fit_trace, read_csv_trace, trace_workload
from statmux.placement.workload import workload_from_spec

MODELS = ["m0", "m1"]


def ref(path: Path, fmt: str, **kw: float) -> TraceRef:
    return TraceRef(path=str(path), format=fmt, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------- csv
def test_csv_replays_exactly_with_or_without_header(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("time,model\n0.5,m1\n0.25,m0\n\n# a comment\n3.0,m0\n")
    bare = tmp_path / "b.csv"
    bare.write_text("0.5,m1\n0.25,m0\n3.0,m0\n")
    for p in (with_header, bare):
        times, ids = read_csv_trace(p, MODELS)
        assert times.tolist() == [0.25, 0.5, 3.0] and ids.tolist() == [0, 1, 0]
    # startSeconds 0.3, duration 2: only the request at 0.5, rebased to 0.2
    w = trace_workload(ref(bare, "csv", start_seconds=0.3), MODELS, 2.0, seed=0)
    assert w.arrivals == pytest.approx([0.2]) and w.model_ids.tolist() == [1]
    assert w.duration == 2.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,model\n1.0,m0\n2.0,nope\n", r"x\.csv:3: unknown model 'nope'.*m0, m1"),
        ("1.0,m0\nsoon,m1\n", r"x\.csv:2: time must be a number of seconds, got 'soon'"),
        ("1.0,m0,0.5,extra\n", r"x\.csv:1: expected 2 fields 'time,model\[,slo\]'"),
        ("1.0,m0,extra\n", r"x\.csv:1: slo must be a positive number of seconds"),
        ("1.0,m0,0.5\n2.0,m1\n", r"x\.csv:2: expected 3 fields"),
        ("-1,m0\n", r"x\.csv:1: time must be a finite number >= 0"),
    ],
)
def test_csv_errors_name_file_line_and_expectation(tmp_path, text, match):
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(SpecError, match=match):
        read_csv_trace(p, MODELS)


def test_missing_trace_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read trace"):
        read_csv_trace(tmp_path / "absent.csv", MODELS)


def test_csv_with_scales_is_refitted(tmp_path):
    p = tmp_path / "t.csv"
    # m0: one request per second for 100 s (CV 0)
    p.write_text("".join(f"{i + 0.5},m0\n" for i in range(100)))
    rates, cvs, edges = fit_trace(ref(p, "csv", window_seconds=50), MODELS, 100.0)
    assert cvs[0] == pytest.approx([MIN_CV, MIN_CV])  # perfectly regular
    assert edges.tolist() == [0.0, 50.0, 100.0]
    assert rates == pytest.approx(np.array([[1.0, 1.0], [0.0, 0.0]]))
    w = trace_workload(ref(p, "csv", window_seconds=50, rate_scale=3), MODELS, 100.0, seed=0)
    # a nearly regular process at 3/s: ~300 requests, all of m0
    assert 290 <= len(w) <= 310 and set(w.model_ids.tolist()) == {0}


# ----------------------------------------------------------------- azure 2019
def write_2019(path: Path, rows: dict[str, list[int]]) -> None:
    minutes = len(next(iter(rows.values())))
    header = ["HashOwner", "HashApp", "HashFunction", "Trigger"]
    header += [str(j) for j in range(1, minutes + 1)]
    lines = [",".join(header)]
    lines += [",".join(["o", "a", f, "http", *map(str, c)]) for f, c in rows.items()]
    path.write_text("\n".join(lines) + "\n")


AZ2019 = {
    "f0": [1] * 10,
    "idle": [0] * 10,  # no invocations: takes no stripe slot
    "f1": [2] * 5 + [0] * 5,
    "f2": [0] * 5 + [3] * 5,
    "f3": [8, 2, 2, 2, 2, 0, 0, 0, 0, 0],
}


def test_azure2019_stripes_functions_and_fits_per_window(tmp_path):
    p = tmp_path / "d01.csv"
    write_2019(p, AZ2019)
    # f0, f2 -> m0: per minute [1]*5 + [4]*5; f1, f3 -> m1: [10, 4, 4, 4, 4, 0, ...]
    rates, cvs, edges = fit_trace(ref(p, "azure2019", window_seconds=300), MODELS, 600.0)
    assert edges.tolist() == [0.0, 300.0, 600.0]
    assert rates == pytest.approx(np.array([[5 / 300, 20 / 300], [26 / 300, 0.0]]))
    assert cvs == pytest.approx(np.ones((2, 2)))  # AlpaServe: base CV 1
    # dispersion estimate for m1's first window [10, 4, 4, 4, 4]: mean 5.2, variance 7.2
    _, cvs_c, _ = fit_trace(
        ref(p, "azure2019", window_seconds=300), MODELS, 600.0, azure2019_cv="counts"
    )
    assert cvs_c[1, 0] == pytest.approx(np.sqrt(7.2 / 5.2))
    assert cvs_c[0, 0] == MIN_CV  # constant per-minute counts: regular arrivals


def test_azure2019_regenerates_with_scales(tmp_path):
    p = tmp_path / "d01.csv"
    write_2019(p, AZ2019)
    trace = ref(p, "azure2019", window_seconds=300, rate_scale=20, cv_scale=2)
    w = trace_workload(trace, MODELS, 600.0, seed=5)
    c = w.counts()
    # expected m0: 20 * (5 + 20) = 500, m1: 20 * 26 = 520; nothing of m1 after 300 s
    assert 350 < c[0] < 650 and 350 < c[1] < 700
    assert w.arrivals[w.model_ids == 1].max() < 300.0
    again = trace_workload(trace, MODELS, 600.0, seed=5)
    assert np.array_equal(w.arrivals, again.arrivals)


def test_azure2019_errors(tmp_path):
    p = tmp_path / "d01.csv"
    write_2019(p, AZ2019)
    with pytest.raises(SpecError, match=r"windowSeconds must be a multiple of 60.*got 90"):
        fit_trace(ref(p, "azure2019", window_seconds=90), MODELS, 600.0)
    with pytest.raises(SpecError, match="covers 10 minutes"):
        fit_trace(ref(p, "azure2019", window_seconds=60), MODELS, 1200.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n")
    with pytest.raises(SpecError, match=r"bad\.csv:2: per-minute counts must be whole"):
        fit_trace(ref(bad, "azure2019", window_seconds=60), MODELS, 60.0)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,model\n1,m0\n")
    with pytest.raises(SpecError, match=r"wrong\.csv:1: not an Azure Functions 2019 trace"):
        fit_trace(ref(wrong, "azure2019", window_seconds=60), MODELS, 60.0)


# ----------------------------------------------------------------- azure 2021
AZ2021 = """app,func,end_timestamp,duration
app1,f1,10.5,0.5
app1,f2,16.0,1.0
app1,f1,20.0,1.0
app2,f1,71.0,1.0
app1,f1,30.0,1.0
app2,f1,81.0,1.0
app2,f1,96.0,1.0
"""


def test_azure2021_starts_stripes_and_fits(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text(AZ2021)
    # starts: app1/f1 10, 19, 29 and app2/f1 70, 80, 95 -> m0; app1/f2 15 -> m1
    rates, cvs, _ = fit_trace(ref(p, "azure2021", window_seconds=60), MODELS, 120.0)
    assert rates == pytest.approx(np.array([[3 / 60, 3 / 60], [1 / 60, 0.0]]))
    # m0 gaps: window 0: 9, 10 (CV 0.5 / 9.5); window 1: 10, 15 (CV 2.5 / 12.5)
    assert cvs[0] == pytest.approx([0.5 / 9.5, 2.5 / 12.5])
    assert cvs[1, 0] == 1.0  # a single arrival: CV 1
    w = trace_workload(ref(p, "azure2021", window_seconds=60, rate_scale=100), MODELS, 120, 0)
    c = w.counts()
    assert 570 <= c[0] <= 630  # 300 per window from nearly regular processes
    assert 50 <= c[1] <= 150  # 100 expected, Poisson, first window only
    assert w.arrivals.max() < 120.0


def test_azure2021_errors(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text("app,func,end_timestamp\na,f,1\n")
    with pytest.raises(SpecError, match=r"inv\.csv:1: not an Azure Functions 2021.*duration"):
        fit_trace(ref(p, "azure2021"), MODELS, 60.0)
    p.write_text("app,func,end_timestamp,duration\na,f,1,0.1\na,f,late,0.1\n")
    with pytest.raises(SpecError, match=r"inv\.csv:3: end_timestamp and duration must be"):
        fit_trace(ref(p, "azure2021"), MODELS, 60.0)


# ----------------------------------------------------------------- through the spec
def test_spec_trace_workload_and_empty_trace(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time,model\n1.0,m0\n2.0,m1\n500,m0\n")
    doc = {
        "models": [{"name": n, "profile": {"builtin": "bert-1.3b"}} for n in MODELS],
        "workload": {"durationSeconds": 10, "trace": {"path": str(p), "format": "csv"}},
        "cluster": {"gpus": 2},
    }
    w = workload_from_spec(parse_spec(doc))
    assert w.arrivals.tolist() == [1.0, 2.0] and w.model_ids.tolist() == [0, 1]
    doc["workload"]["trace"]["startSeconds"] = 600
    with pytest.raises(SpecError, match=r"trace.*no requests in 10 s"):
        workload_from_spec(parse_spec(doc))


def test_trace_span_is_the_default_duration_and_a_cut_is_reported(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time,model\n1.0,m0\n2.0,m1\n7200,m0\n")
    doc = {
        "models": [{"name": n, "profile": {"builtin": "bert-1.3b"}} for n in MODELS],
        "workload": {"trace": {"path": str(p), "format": "csv"}},
        "cluster": {"gpus": 2},
    }
    w = workload_from_spec(parse_spec(doc))
    assert w.arrivals.tolist() == [1.0, 2.0, 7200.0]  # the 2-hour trace, whole
    assert w.duration == pytest.approx(7200.0) and w.duration >= 7200.0 and not w.notes
    doc["workload"]["durationSeconds"] = 3600
    cut = workload_from_spec(parse_spec(doc))
    assert len(cut) == 2
    assert len(cut.notes) == 1 and "keeps 2 of the 3 requests" in cut.notes[0]
    assert "7200" in cut.notes[0]
    # the re-fitted path reports the cut too
    doc["workload"]["trace"]["rateScale"] = 2.0
    assert workload_from_spec(parse_spec(doc)).notes


def test_csv_slo_column_sets_per_request_deadlines(tmp_path):
    from statmux.placement.plan import Group, Placement
    from statmux.placement.profile import ParallelConfig
    from statmux.placement.simulator import Simulator
    from statmux.placement.synthetic_profiles import make_profile

    p = tmp_path / "t.csv"
    # one-stage 0.1 s model; requests at 0 and 0.05: the second finishes at 0.2 (latency
    # 0.15): it misses its own 0.1 s SLO, the model's 1 s SLO would have kept it
    p.write_text("time,model,slo\n0.0,m0,\n0.05,m0,0.1\n0.5,m0,0.2\n")
    times, ids = read_csv_trace(p, MODELS)
    assert times.tolist() == [0.0, 0.05, 0.5] and ids.tolist() == [0, 0, 0]
    w = trace_workload(ref(p, "csv"), MODELS, None, 0)
    assert w.slo is not None and np.isnan(w.slo[0]) and w.slo[1:].tolist() == [0.1, 0.2]
    profiles = {m: make_profile(m, {(1, 1): [0.1]}) for m in MODELS}
    place = Placement([Group(ParallelConfig(1, 1), ["m0"])])
    res = Simulator(profiles, w, {"m0": 1.0, "m1": 1.0}).run(place)
    assert (res.n_good, res.n_rejected) == (2, 1)


def test_fast_reader_agrees_with_the_line_reader(tmp_path):
    from statmux.placement.traces import _read_csv_fast, _read_csv_lines

    rng = np.random.default_rng(0)
    t = np.round(rng.random(2000) * 100, 6)
    m = rng.integers(0, 2, 2000)
    lines = [f" {a} , m{b} " for a, b in zip(t, m, strict=True)]
    lines.insert(500, "# a comment")
    p = tmp_path / "big.csv"
    p.write_text("time,model\n" + "\n".join(lines) + "\n")
    fast = _read_csv_fast(p, MODELS)
    assert fast is not None  # the whole file went through pyarrow
    slow = _read_csv_lines(p, MODELS)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert fast[2] is None and slow[2] is None
