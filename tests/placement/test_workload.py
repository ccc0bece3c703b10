"""Synthetic workloads: Gamma arrivals, rate splits, slicing and the ModelSet entry point."""

from __future__ import annotations

import numpy as np
import pytest

from statmux.placement.spec import SpecError, parse_spec
from statmux.placement.workload import (
    Workload,
    gamma_arrivals,
    gamma_workload,
    model_rng,
    split_rates,
    window_workloads,
    workload_from_spec,
)


def test_split_rates_uniform_and_power_law():
    assert split_rates(6.0, 3) == pytest.approx([2.0, 2.0, 2.0])
    # weights 1, 1/2, 1/3 (sum 11/6) scaled to 6
    assert split_rates(6.0, 3, "powerLaw", 1.0) == pytest.approx([36 / 11, 18 / 11, 12 / 11])
    # exponent 0 is uniform
    assert split_rates(4.0, 4, "powerLaw", 0.0) == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="powerLaw"):
        split_rates(1.0, 2, "zipf")  # type: ignore[arg-type]


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_arrivals_have_the_requested_rate_and_cv(cv):
    times = gamma_arrivals(50.0, cv, 10.0, 4000.0, model_rng(7, 0))
    assert times.min() >= 10.0 and times.max() < 4010.0
    assert np.all(np.diff(times) >= 0)
    # 200k expected arrivals: the rate is within a few percent even for CV 4
    assert times.size / 4000.0 == pytest.approx(50.0, rel=0.08)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_workload_is_deterministic_and_models_are_independent():
    a = gamma_workload(["x", "y"], [3.0, 5.0], 2.0, 100.0, seed=1)
    b = gamma_workload(["x", "y"], [3.0, 5.0], 2.0, 100.0, seed=1)
    assert np.array_equal(a.arrivals, b.arrivals) and np.array_equal(a.model_ids, b.model_ids)
    c = gamma_workload(["x", "y", "z"], [3.0, 5.0, 9.0], 2.0, 100.0, seed=1)
    for m in (0, 1):
        assert np.array_equal(a.arrivals[a.model_ids == m], c.arrivals[c.model_ids == m])
    d = gamma_workload(["x", "y"], [3.0, 5.0], 2.0, 100.0, seed=2)
    assert not np.array_equal(a.arrivals[a.model_ids == 0], d.arrivals[d.model_ids == 0])
    assert np.all(np.diff(a.arrivals) >= 0)
    assert len(a) == int(a.counts().sum())


def test_rates_and_slices_keep_absolute_times():
    w = Workload(["a", "b"], np.array([0.5, 1.0, 2.5, 3.0]), np.array([0, 1, 0, 0]), 4.0)
    assert w.rates() == pytest.approx([0.75, 0.25])
    s = w.slice(1.0, 3.0)
    assert s.arrivals.tolist() == [1.0, 2.5] and s.start == 1.0 and s.duration == 2.0
    assert s.rates() == pytest.approx([0.5, 0.5])
    parts = window_workloads(w, 1.5)
    assert [p.start for p in parts] == [0.0, 1.5, 3.0]
    assert [p.duration for p in parts] == pytest.approx([1.5, 1.5, 1.0])
    assert sum(len(p) for p in parts) == len(w)
    assert np.array_equal(np.concatenate([p.arrivals for p in parts]), w.arrivals)
    only_b = w.select(["b"])
    assert only_b.model_names == ["b"] and only_b.arrivals.tolist() == [1.0]


def spec(workload: dict) -> dict:
    return {
        "models": [{"name": n, "profile": {"builtin": "bert-1.3b"}} for n in ("m-a", "m-b", "m-c")],
        "workload": workload,
        "cluster": {"gpus": 4},
    }


def test_workload_from_spec_total_power_law():
    s = parse_spec(
        spec(
            {
                "durationSeconds": 2000,
                "seed": 3,
                "total": {"rate": 30, "cv": 2, "split": "powerLaw", "exponent": 1},
            }
        )
    )
    w = workload_from_spec(s)
    assert w.model_names == ["m-a", "m-b", "m-c"] and w.duration == 2000
    assert w.rates() == pytest.approx(split_rates(30, 3, "powerLaw", 1), rel=0.1)
    assert np.array_equal(workload_from_spec(s).arrivals, w.arrivals)


def test_workload_from_spec_per_model_leaves_unlisted_models_idle():
    s = parse_spec(
        spec({"durationSeconds": 1000, "perModel": [{"model": "m-b", "rate": 4, "cv": 1}]})
    )
    w = workload_from_spec(s)
    counts = w.counts()
    assert counts[0] == 0 and counts[2] == 0
    assert counts[1] / 1000 == pytest.approx(4, rel=0.1)


def test_workload_from_spec_rejects_an_empty_workload():
    s = parse_spec(spec({"perModel": [{"model": "m-a", "rate": 0}]}))
    with pytest.raises(SpecError, match=r"perModel.*every rate is 0"):
        workload_from_spec(s)
