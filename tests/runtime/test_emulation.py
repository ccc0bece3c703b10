"""Emulated devices: a stage's forward takes at least its profiled time, on a real group."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import tritonclient.http as th

from statmux.placement.plan import Plan
from statmux.runtime.emulation import EmulationError, StageEmulator
from statmux.runtime.local_cluster import ClusterOptions, LocalCluster


def test_profiled_seconds_follow_the_batch_lookup():
    emu = StageEmulator(1, {0: ("m", {1: [0.1, 0.2], 4: [0.3, 0.5]})})
    assert emu.seconds(0, 1) == 0.2
    assert emu.seconds(0, 3) == 0.5  # the next profiled size up
    assert emu.seconds(0, 8) == pytest.approx(1.0)  # past the profile: linear in rows


def test_hold_lasts_at_least_the_profiled_time():
    emu = StageEmulator(0, {0: ("m", {1: [0.05]})})
    start = time.perf_counter_ns()
    emu.hold(0, 1, start)
    assert time.perf_counter_ns() - start >= 0.05e9


def test_emulated_outputs_are_computed_once_per_shape() -> None:
    emu = StageEmulator(0, {0: ("m", {1: [0.01]})})
    seen: list[tuple[int, ...]] = []

    def module(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        seen.append(tuple(xs[0].shape))
        return [xs[0].float() * 2]

    a = emu.forward(0, [torch.ones(1, 3)], module)
    b = emu.forward(0, [torch.ones(1, 3)], module)
    c = emu.forward(0, [torch.ones(2, 3)], module)
    assert seen == [(1, 3), (2, 3)] and emu.forwards == 2
    assert torch.equal(a[0], torch.full((1, 3), 2.0)) and torch.equal(b[0], a[0])
    assert c[0].shape == (2, 3)
    b[0].add_(1)  # a copy: the kept output is not changed by its users
    assert torch.equal(emu.forward(0, [torch.ones(1, 3)], module)[0], a[0])


def test_a_model_without_a_profile_is_refused():
    with pytest.raises(EmulationError, match="model 'm' has no stageLatencySeconds"):
        StageEmulator(0, {0: ("m", {})})
    with pytest.raises(EmulationError, match="has 1 stages, this rank runs stage 1"):
        StageEmulator(1, {0: ("m", {1: [0.1]})})


@pytest.mark.slow
def test_an_emulated_pp2_group_takes_its_profiled_time(tmp_path):
    stage = [0.15, 0.25]
    plan = Plan.from_dict(
        {
            "apiVersion": "statmux.io/v1alpha1",
            "kind": "Plan",
            "modelSet": "emu",
            "policy": "manual",
            "cluster": {"gpus": 2, "gpuMemoryBytes": 2**30, "gpusPerNode": 2},
            "groups": [
                {
                    "name": "g0", "gpus": 2, "pp": 2, "tp": 1, "memoryPerGpuBytes": 0,
                    "models": [{
                        "name": "m", "sloSeconds": 30, "stageLatencySeconds": {"1": stage},
                        "weightBytesPerGpu": 0,
                        "weights": {"architecture": "bert", "preset": "tiny", "dtype": "float32"},
                    }],
                }
            ],
            "predicted": {"attainment": 1.0},
        }
    )  # fmt: skip
    plan_path = tmp_path / "plan.json"
    plan.write(plan_path)
    options = ClusterOptions(with_router=False, emulate_device=True)
    with LocalCluster(plan, plan_path, tmp_path / "run", options) as cluster:
        cluster.start()
        cluster.wait_ready(240)
        client = th.InferenceServerClient(cluster.groups[0].url.removeprefix("http://"))
        ids = np.array([[1, 2, 3]], dtype=np.int64)
        inp = th.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        start = time.perf_counter()
        out = client.infer("m", [inp]).as_numpy("last_hidden_state")
        elapsed = time.perf_counter() - start
    assert out.shape == (1, 3, 32) and np.isfinite(out).all()  # the real shards still ran
    assert elapsed >= sum(stage)
