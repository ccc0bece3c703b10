"""`statmux bench simulator --json`: one JSON object whose figures are true and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import numba
import pytest

from statmux.placement.bench_simulator import LATENCY
from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.simulator import Simulator
from statmux.placement.synthetic_profiles import bert_like_profile
from statmux.placement.workload import gamma_workload, split_rates


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
    cases = {c["case"]: c for c in figures["cases"]}
    assert len(cases) == 6
    for c in cases.values():
        assert c["requests"] > 100_000  # an hour at 100+ req/s
        assert 0.0 <= c["attainment"] <= 1.0
        assert c["seconds"] > 0 and c["firstCallSeconds"] > 0
        # the throughput is the requests over the best time, not another measurement
        assert c["requestsPerSecond"] == pytest.approx(c["requests"] / c["seconds"])
    eight = [c for name, c in cases.items() if name.startswith("8 models")]
    assert len({c["requests"] for c in eight}) == 1  # one workload for the 8-model cases
    assert [c["maxBatchSize"] for c in eight] == [1, 1, 1, 1, 8]
    assert figures["compileSeconds"] > 0 and figures["threads"] == 1
    assert figures["numba"] == numba.__version__

    # The reported attainment is the simulator's, recomputed here independently.
    names = [f"bert-{i}" for i in range(8)]
    work = gamma_workload(names, split_rates(100.0, 8), 4.0, 3600.0, seed=0)
    sim = Simulator(
        {n: bert_like_profile(n, LATENCY) for n in names}, work, {n: 5 * LATENCY for n in names}
    )
    single = Placement([Group(ParallelConfig(1, 1), [n]) for n in names])
    case = cases["8 models, 8 x 1 GPU"]
    assert case["requests"] == len(sim)
    assert case["attainment"] == pytest.approx(sim.attainment(single), abs=1e-4)
