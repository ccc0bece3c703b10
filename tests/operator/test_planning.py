"""The reconciler with the real placement engine (no stand-in planner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

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
