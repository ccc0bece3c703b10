"""Experiment sweeps write a CSV and a PNG with one column/line per policy."""

from __future__ import annotations

import csv

import pytest

from statmux.placement import experiments
from statmux.placement.scenarios import modelset


@pytest.fixture
def tiny_sweep(monkeypatch):
    def build(v, quick):
        return modelset(["bert-1.3b"] * 3 + ["bert-2.6b"] * 3, gpus=int(v), rate=6.0, duration=60.0)

    monkeypatch.setitem(
        experiments.SWEEPS, "gpus", experiments.Sweep("gpus", [4, 6], build, "GPUs")
    )


def test_sweep_writes_csv_and_png(tmp_path, tiny_sweep):
    files = experiments.run_experiment("gpus", tmp_path)
    csv_path, png_path = files
    assert png_path.suffix == ".png" and png_path.stat().st_size > 1000
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(csv_path.open()))
    assert [float(r["gpus"]) for r in rows] == [4, 6]
    for r in rows:
        for policy in experiments.POLICIES:
            assert 0.0 <= float(r[policy]) <= 1.0
        # the default policy is never worse than the replication baseline
        assert float(r["statmux"]) >= float(r["sr"])


def test_unknown_experiment_is_a_usage_error(tmp_path):
    from statmux.cli import main as run

    assert run(["experiment", "bogus", "--out", str(tmp_path)]) == 2
