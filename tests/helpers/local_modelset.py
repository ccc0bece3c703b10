"""A small ModelSet for the local-serving tests: tiny models, two groups, one of them pp2."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def inline_profile(stage_s: float = 0.004) -> dict:
    return {
        "inline": {
            "weightBytes": 1e6,
            "configs": [
                {"pipelineStages": 1, "tensorParallel": 1, "stageLatencyS": {"1": [2 * stage_s]}},
                {
                    "pipelineStages": 2,
                    "tensorParallel": 1,
                    "stageLatencyS": {"1": [stage_s, stage_s]},
                },
            ],
        }
    }


def modelset(rate: float = 4.0, duration: float = 60.0, stage_s: float = 0.004) -> dict:
    def model(name: str, arch: str) -> dict:
        return {
            "name": name,
            "profile": inline_profile(stage_s),
            "weights": {"architecture": arch, "preset": "tiny", "dtype": "float32"},
            "slo": {"latencySeconds": 2.0},
        }

    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": "tiny"},
        "spec": {
            "models": [model("bert-a", "bert"), model("gpt2-a", "gpt2"), model("bert-b", "bert")],
            "workload": {
                "durationSeconds": duration,
                "seed": 3,
                "perModel": [
                    {"model": "bert-a", "rate": rate, "cv": 1},
                    {"model": "gpt2-a", "rate": rate / 2, "cv": 1},
                    {"model": "bert-b", "rate": rate / 2, "cv": 1},
                ],
            },
            "cluster": {"gpus": 3, "gpuMemory": "1Gi", "gpusPerNode": 3},
            "placement": {
                "policy": "manual",
                "groups": [
                    {"pipelineStages": 2, "tensorParallel": 1, "models": ["bert-a", "gpt2-a"]},
                    {"pipelineStages": 1, "tensorParallel": 1, "models": ["bert-b"]},
                ],
            },
        },
    }


def write_modelset(path: Path, doc: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(doc or modelset()))
    return path


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc/PID/task/*/children)."""
    found: set[int] = set()
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for k in kids:
                if k not in found:
                    found.add(k)
                    stack.append(k)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
