"""A group's admission predicts with the Plan's overheads, as the router and simulator do."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from statmux.placement.plan import Plan, PlanCluster, PlanOverheads, Predicted
from statmux.runtime.local_cluster import ClusterOptions, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from plans import plan_group


@pytest.mark.slow
def test_a_stage_overhead_past_the_slo_is_refused_by_the_group(tmp_path: Path) -> None:
    """Both models are profiled at 10 ms per stage; with a 10 s per-stage overhead in its Plan,
    one of them can never meet its 5 s SLO, and the group's admission says so at once."""
    group = plan_group("g0", 2, 1, ["slow", "plain"], slo_seconds=5.0)
    slow = group.models[0].model_copy(update={"overheads": PlanOverheads(stage_seconds=10.0)})
    plan = Plan(
        model_set="overheads",
        policy="manual",
        cluster=PlanCluster(gpus=2, gpu_memory_bytes=2**30, gpus_per_node=2),
        groups=[group.model_copy(update={"models": [slow, group.models[1]]})],
        predicted=Predicted(attainment=1.0),
    )
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
