"""A group's admission predicts with the Plan's overheads, as the router and simulator do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from statmux.placement.plan import Plan
from statmux.runtime.local_cluster import ClusterOptions, LocalCluster

WEIGHTS = {"architecture": "bert", "preset": "tiny", "dtype": "float32"}


def _model(name: str, overheads: dict[str, float] | None) -> dict[str, object]:
    m: dict[str, object] = {
        "name": name,
        "sloSeconds": 5.0,
        "stageLatencySeconds": {"1": [0.001, 0.001]},
        "weightBytesPerGpu": 0,
        "weights": WEIGHTS,
    }
    if overheads is not None:
        m["overheads"] = overheads
    return m


@pytest.mark.slow
def test_a_stage_overhead_past_the_slo_is_refused_by_the_group(tmp_path: Path) -> None:
    """Both models compute in about a millisecond; with a 10 s per-stage overhead in its Plan,
    one of them can never meet its 5 s SLO, and the group's admission says so at once."""
    plan = Plan.from_dict(
        {
            "apiVersion": "statmux.io/v1alpha1",
            "kind": "Plan",
            "modelSet": "overheads",
            "policy": "manual",
            "cluster": {"gpus": 2, "gpuMemoryBytes": 2**30, "gpusPerNode": 2},
            "groups": [
                {
                    "name": "g0", "gpus": 2, "pp": 2, "tp": 1, "memoryPerGpuBytes": 0,
                    "models": [_model("slow", {"stageSeconds": 10.0}), _model("plain", None)],
                }
            ],
            "predicted": {"attainment": 1.0},
        }
    )  # fmt: skip
    plan_path = tmp_path / "plan.json"
    plan.write(plan_path)
    with LocalCluster(plan, plan_path, tmp_path / "run", ClusterOptions(with_router=False)) as c:
        c.start()
        c.wait_ready(240)
        client = th.InferenceServerClient(c.groups[0].url.removeprefix("http://"))
        ids = np.array([[1, 2, 3]], dtype=np.int64)
        inp = th.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        assert client.infer("plain", [inp]).as_numpy("last_hidden_state").shape == (1, 3, 32)
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", [inp])
    assert err.value.status() == "429"
    assert "rejected by SLO admission: predicted 100" in str(err.value)  # 10 s and more
