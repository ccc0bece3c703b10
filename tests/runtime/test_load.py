"""`statmux load`: the simulator's arrivals, open loop, against a real group; every request
is counted once (sent = ok + rejected + errors)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from local_modelset import inline_profile, write_modelset

from statmux.placement.planner import plan_modelset
from statmux.placement.spec import load_modelset
from statmux.placement.workload import workload_from_spec
from statmux.runtime.load_cli import load_main, prepare, print_report
from statmux.runtime.loadgen import classify
from statmux.runtime.local_cluster import ClusterOptions, LocalCluster


def one_group_modelset() -> dict:
    def model(name: str, slo: float) -> dict:
        return {
            "name": name,
            "profile": inline_profile(0.004),
            "weights": {"architecture": "bert", "preset": "tiny", "dtype": "float32"},
            "slo": {"latencySeconds": slo},
        }

    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": "one"},
        "spec": {
            # bert-c's SLO is below its profiled latency: admission rejects every request
            "models": [model("bert-b", 5.0), model("bert-c", 0.0001)],
            "workload": {
                "durationSeconds": 30,
                "seed": 7,
                "perModel": [
                    {"model": "bert-b", "rate": 4, "cv": 1},
                    {"model": "bert-c", "rate": 2, "cv": 1},
                ],
            },
            "cluster": {"gpus": 1, "gpuMemory": "1Gi", "gpusPerNode": 1},
            "placement": {
                "policy": "manual",
                "groups": [
                    {"pipelineStages": 1, "tensorParallel": 1, "models": ["bert-b", "bert-c"]}
                ],
            },
        },
    }


def test_arrivals_are_the_simulators(tmp_path):
    ms = load_modelset(write_modelset(tmp_path / "ms.yaml", one_group_modelset()))
    plan = plan_modelset(ms)
    prepared = prepare(ms, plan, 5.0)
    full = workload_from_spec(ms.spec)
    keep = full.arrivals < 5.0
    np.testing.assert_array_equal(prepared.workload.arrivals, full.arrivals[keep])
    np.testing.assert_array_equal(prepared.workload.model_ids, full.model_ids[keep])
    assert prepared.predicted.n_requests == int(keep.sum())
    # bert-c cannot meet its SLO anywhere: the simulator rejects it too
    assert prepared.predicted.per_model_attainment["bert-c"] == 0.0


def test_duration_beyond_the_workload_is_a_usage_error(tmp_path, capsys):
    ms = write_modelset(tmp_path / "ms.yaml", one_group_modelset())
    assert load_main(["127.0.0.1:1", "--modelset", str(ms), "--duration", "31", "-q"]) == 2
    assert "durationSeconds: 30 s" in capsys.readouterr().err


def test_unreachable_endpoint_exits_2(tmp_path, capsys):
    ms = write_modelset(tmp_path / "ms.yaml", one_group_modelset())
    assert load_main(["127.0.0.1:1", "--modelset", str(ms), "--duration", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the metadata of model" in err and "Traceback" not in err


def test_rejections_are_told_apart_from_errors():
    assert classify(InferenceServerException("rejected by SLO admission", status="429")) == (
        "rejected"
    )
    grpc_reject = InferenceServerException(
        "rejected by SLO admission", status="StatusCode.RESOURCE_EXHAUSTED"
    )
    assert classify(grpc_reject) == "rejected"
    assert classify(InferenceServerException("boom", status="500")) == "error"
    assert classify(TimeoutError()) == "error"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_against_a_real_group_counts_every_request(tmp_path, capsys, protocol):
    ms_path = write_modelset(tmp_path / "ms.yaml", one_group_modelset())
    ms = load_modelset(ms_path)
    plan = plan_modelset(ms)
    plan_path = tmp_path / "plan.json"
    plan.write(plan_path)
    options = ClusterOptions(with_router=False)
    with LocalCluster(plan, plan_path, tmp_path / "run", options) as cluster:
        cluster.start()
        cluster.wait_ready(240)
        group = cluster.groups[0]
        port = group.http_port if protocol == "http" else group.grpc_port
        argv = [f"127.0.0.1:{port}", "--modelset", str(ms_path), "--plan", str(plan_path)]
        code = load_main([*argv, "--duration", "4", "--protocol", protocol, "--json", "-q"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    expected = int((workload_from_spec(ms.spec).arrivals < 4).sum())
    overall = doc["overall"]
    assert overall["sent"] == expected == doc["predicted"]["requests"]
    assert overall["sent"] == overall["ok"] + overall["rejected"] + overall["errors"]
    b, c = doc["perModel"]["bert-b"], doc["perModel"]["bert-c"]
    # a 5 s SLO: served, unless an overloaded machine queues it past 5 s (dropped: 429)
    assert b["errors"] == 0 and b["ok"] > 0 and b["ok"] + b["rejected"] == b["sent"]
    assert b["latency"]["p50"] > 0 and b["withinSlo"] <= b["ok"]
    assert c["rejected"] == c["sent"] > 0 and c["attainment"] == 0.0  # 429 from admission
    assert c["predictedAttainment"] == 0.0
    # the table `statmux load` (and `statmux up --load`, README's first command) prints
    out = io.StringIO()
    print_report(doc, Console(file=out, width=200))
    lines = [line.split("│") for line in out.getvalue().splitlines() if line.startswith("│")]
    rows = {cells[1].strip(): cells[2:-1] for cells in lines}
    assert set(rows) == {"bert-b", "bert-c", "all"}, out.getvalue()
    cells = [x.strip() for x in rows["all"]]
    assert cells[:4] == [str(overall[k]) for k in ("sent", "ok", "rejected", "errors")]
    assert cells[4] == f"{100 * overall['attainment']:.2f} %"
    assert cells[5] == f"{100 * doc['predicted']['attainment']:.2f} %"
    assert [x.strip() for x in rows["bert-c"]][3:6] == ["0", "0.00 %", "0.00 %"]
    assert f"measured {100 * overall['attainment']:.2f} %" in out.getvalue()
