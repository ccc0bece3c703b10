"""The reconciler with the real placement engine (no stand-in planner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from slo_admission_example import (  # tests/helpers: on the path by conftest.py
    BOTH_ON_ONE_GPU,
    long_and_short_spec,
    write_trace,
)

from statmux.operator import reconcile as rc
from statmux.operator.config import OperatorConfig
from statmux.operator.resources import GPU, Owner

ROOT = Path(__file__).resolve().parents[2]


def test_reconcile_plans_with_the_placement_engine(api: Any, helpers: Any) -> None:
    owner = Owner("small", "ns", "u")
    spec = {
        "models": [
            {"name": "a", "profile": {"builtin": "bert-1.3b"}},
            {"name": "b", "profile": {"builtin": "bert-1.3b"}},
        ],
        "workload": {"durationSeconds": 60, "total": {"rate": 4}},
        "cluster": {"gpus": 4},
        "placement": {"policy": "statmux"},
    }
    res = rc.reconcile(api, OperatorConfig(), owner, 1, spec, None)
    assert res.error is None
    st = res.status
    assert st["policy"] == "statmux" and 0 <= st["predictedAttainment"] <= 1
    assert st["gpus"] <= 4 and st["groupCount"] >= 1
    placed = {m for g in st["groups"] for m in g["models"]}
    assert placed == {"a", "b"}
    stored = json.loads(api.objects[("ConfigMap", "ns", "small-plan")]["data"]["plan.json"])
    assert stored["kind"] == "Plan" and stored["modelSet"] == "small"
    # GPU requests over the StatefulSets add up to the plan's GPUs
    total = 0
    for sts in api.by_kind("StatefulSet").values():
        res_ = sts["spec"]["template"]["spec"]["containers"][0]["resources"]
        total += int(res_["limits"][GPU]) * sts["spec"]["replicas"]
    assert total == st["gpus"]


def test_a_replan_with_more_resources_keeps_at_least_the_deployed_attainment(api: Any) -> None:
    """Raising the ModelSet's GPU budget or memory re-plans with the deployed plan as the
    incumbent: the predicted attainment never drops, the PlanReady message says what became
    of the deployed plan, and a kept plan keeps its hash (no pod rolls)."""
    owner = Owner("grow", "ns", "u")
    spec = {
        "models": [{"name": f"m{i}", "profile": {"builtin": "bert-1.3b"}} for i in range(4)],
        "workload": {"durationSeconds": 60, "total": {"rate": 12, "cv": 6}},
        "cluster": {"gpus": 2, "gpuMemory": "13Gi"},
        "placement": {"policy": "statmux"},
    }
    status = rc.reconcile(api, OperatorConfig(), owner, 1, spec, None).status
    outcomes = []
    for generation, (gpus, memory) in enumerate([(3, "13Gi"), (8, "13Gi"), (8, "20Gi")], 2):
        before = status["predictedAttainment"]
        deployed = json.loads(api.objects[("ConfigMap", "ns", "grow-plan")]["data"]["plan.json"])
        spec["cluster"] = {"gpus": gpus, "gpuMemory": memory}
        status = rc.reconcile(api, OperatorConfig(), owner, generation, spec, status).status
        assert status["predictedAttainment"] >= before
        stored = json.loads(api.objects[("ConfigMap", "ns", "grow-plan")]["data"]["plan.json"])
        incumbent = stored["search"]["incumbent"]
        assert incumbent["attainment"] == deployed["predicted"]["attainment"]
        outcomes.append(incumbent["outcome"])
        message = next(c["message"] for c in status["conditions"] if c["type"] == "PlanReady")
        assert f"{incumbent['outcome']} the previous plan" in message
        if incumbent["outcome"] == "kept":
            assert stored["planHash"] == deployed["planHash"]
    # 8 GPUs serve everything (1.0): nothing can score higher with more memory, it stays
    assert before == 1.0 and outcomes[-1] == "kept"


def test_loosening_the_slo_never_lowers_the_deployed_attainment(api: Any, tmp_path: Path) -> None:
    """One GPU, a 3 s and a 1 s model, five requests (tests/placement/test_cli.py): at 2x the
    SLO, admitting the long request would lose two short ones (60 %). The re-plan keeps the
    deployed plan admitting by its previous bound: 80 %, and the stored Plan carries
    admissionSeconds for the router and the groups."""
    trace = str(write_trace(tmp_path))
    owner = Owner("loosen", "ns", "u")
    spec = long_and_short_spec(1.0, trace, BOTH_ON_ONE_GPU)
    status = rc.reconcile(api, OperatorConfig(), owner, 1, spec, None).status
    assert status["predictedAttainment"] == 0.8
    looser = long_and_short_spec(2.0, trace, {"policy": "statmux"})
    status = rc.reconcile(api, OperatorConfig(), owner, 2, looser, status).status
    assert status["predictedAttainment"] == 0.8
    stored = json.loads(api.objects[("ConfigMap", "ns", "loosen-plan")]["data"]["plan.json"])
    bounds = {m["name"]: m.get("admissionSeconds") for g in stored["groups"] for m in g["models"]}
    assert bounds == {"long": 3.0, "short": 1.0}
    message = next(c["message"] for c in status["conditions"] if c["type"] == "PlanReady")
    assert "admitting by its previous bound, below the new SLO" in message


def test_planner_spec_errors_become_conditions(api: Any) -> None:
    owner = Owner("bad", "ns", "u")
    spec = {
        "models": [{"name": "a", "profile": {"builtin": "no-such-model"}}],
        "workload": {"total": {"rate": 4}},
        "cluster": {"gpus": 4},
    }
    res = rc.reconcile(api, OperatorConfig(), owner, 1, spec, None)
    assert res.error and "no-such-model" in res.error
    assert any(c["reason"] == "InvalidSpec" for c in res.status["conditions"])
    assert not api.objects


def test_example_modelset_is_a_valid_resource() -> None:
    """examples/demo.yaml passes the operator's own validation (its name fits the CRD)."""
    from statmux.operator.crd import MAX_NAME_LENGTH
    from statmux.placement.spec import parse_spec

    doc = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    assert len(doc["metadata"]["name"]) <= MAX_NAME_LENGTH
    parse_spec(doc["spec"])
