"""Placements (what the search manipulates) and the Plan (the JSON contract).

The Plan JSON is what the operator writes into a ConfigMap and what every runtime rank
reads: it is self-contained, so a pod needs nothing but the Plan to serve its group.
Schema (documented in docs/plan.md):

{
  "apiVersion": "statmux.io/v1alpha1", "kind": "Plan",
  "modelSet": "<name>", "policy": "statmux", "maxBatchSize": 1,
  "cluster": {"gpus": 8, "gpuMemoryBytes": 13958643712, "gpusPerNode": 8},
  "groups": [
    {"name": "g0", "gpus": 4, "pp": 2, "tp": 2, "memoryPerGpuBytes": 2.6e9,
     "models": [
        {"name": "bert-a", "sloSeconds": 0.5,
         "stageLatencySeconds": {"1": [0.05, 0.05], "2": [...]},   # this group's config
         "weightBytesPerGpu": 1.3e9,
         "weights": {"source": "synthetic", "architecture": "bert", ...}}]}
  ],
  "predicted": {"attainment": 0.99, "goodput": 98.0, "perModel": {"bert-a": 0.99},
                "baselines": {"sr": 0.93}},
  "search": {"seconds": 0.8, "simulations": 40}
}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statmux.placement.profile import ModelProfile, ParallelConfig

PLAN_API_VERSION = "statmux.io/v1alpha1"


@dataclass
class Group:
    config: ParallelConfig
    models: list[str] = field(default_factory=list)

    def copy(self) -> Group:
        return Group(self.config, list(self.models))


@dataclass
class Placement:
    groups: list[Group] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return sum(g.config.gpus for g in self.groups)

    def copy(self) -> Placement:
        return Placement([g.copy() for g in self.groups])

    def replicas(self, model: str) -> int:
        return sum(model in g.models for g in self.groups)

    def describe(self) -> str:
        """Compact form like '9x(pp4,tp1) 3x(pp1,tp4)', as the AlpaServe artifact prints."""
        counts: dict[ParallelConfig, int] = {}
        for g in self.groups:
            counts[g.config] = counts.get(g.config, 0) + 1
        return " ".join(f"{n}x(pp{c.pp},tp{c.tp})" for c, n in sorted(counts.items()))


def group_memory_per_gpu(group: Group, profiles: dict[str, ModelProfile]) -> float:
    """Weight bytes on the fullest GPU of the group."""
    total = 0.0
    for m in group.models:
        cp = profiles[m].get(group.config.pp, group.config.tp)
        if cp is None:
            raise KeyError(f"profile {m!r} has no config {group.config}")
        total += cp.weight_bytes_per_gpu
    return total


@dataclass
class Plan:
    """The contract between placement, operator and runtime (see module docstring)."""

    data: dict[str, Any]

    @property
    def groups(self) -> list[dict[str, Any]]:
        return list(self.data["groups"])

    @property
    def attainment(self) -> float:
        return float(self.data["predicted"]["attainment"])

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        if data.get("kind") != "Plan" or data.get("apiVersion") != PLAN_API_VERSION:
            raise ValueError(
                f"not a statmux Plan (expected kind: Plan, apiVersion: {PLAN_API_VERSION})"
            )
        return cls(data)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())

    def placement(self) -> Placement:
        return Placement(
            [
                Group(ParallelConfig(g["pp"], g["tp"]), [m["name"] for m in g["models"]])
                for g in self.data["groups"]
            ]
        )
