"""The smallest case where SLO-aware admission does worse with a looser SLO.

One GPU, a 3 s model ("long") and a 1 s model ("short"), five requests. At SLO 1x the long
request is rejected and every short one served (4 of 5); at 2x the long one is admitted and
pushes two short ones past their SLO (3 of 5). Used by the CLI and operator tests of the
re-plan that keeps the previous admission bound (Plan admissionSeconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRACE = "time,model\n0,short\n0.5,long\n1,short\n2,short\n3,short\n"
BOTH_ON_ONE_GPU = {
    "policy": "manual",
    "groups": [{"pipelineStages": 1, "tensorParallel": 1, "models": ["long", "short"]}],
}


def write_trace(folder: Path) -> Path:
    path = folder / "trace.csv"
    path.write_text(TRACE)
    return path


def long_and_short_spec(slo_scale: float, trace: str, placement: dict[str, Any]) -> dict[str, Any]:
    """The ModelSet spec: SLOs `slo_scale` times each model's latency, `trace` as written by
    `write_trace` (a path the ModelSet can resolve)."""

    def model(name: str, seconds: float) -> dict[str, Any]:
        config = {"pipelineStages": 1, "tensorParallel": 1, "stageLatencyS": {"1": [seconds]}}
        return {
            "name": name,
            "profile": {"inline": {"weightBytes": 1e9, "configs": [config]}},
            "slo": {"latencySeconds": seconds * slo_scale},
        }

    return {
        "models": [model("long", 3.0), model("short", 1.0)],
        "maxBatchSize": 1,
        "workload": {"trace": {"path": trace, "format": "csv"}},
        "cluster": {"gpus": 1, "gpuMemory": "8Gi"},
        "placement": placement,
    }
