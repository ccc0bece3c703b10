"""`statmux bench simulator --json` prints one JSON object with throughput figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_simulator_json():
    res = subprocess.run(
        [sys.executable, "-m", "statmux", "bench", "simulator", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout)
    assert figures and isinstance(figures, dict)
    text = json.dumps(figures)
    assert "req" in text  # throughput figures are present
