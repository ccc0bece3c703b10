"""ModelSets for benchmarks and experiments, built in code from a few parameters."""

from __future__ import annotations

from typing import Any

from statmux.placement.spec import ModelSet, parse_modelset

# The AlpaServe evaluation's model mixes.
BERT_MIX = ("bert-1.3b", "bert-2.6b", "bert-6.7b")
S3_MIX = ("bert-6.7b", "moe-5.3b", "bert-2.6b", "moe-2.4b", "bert-1.3b", "moe-1.3b")


def modelset(
    profiles: list[str],
    gpus: int,
    rate: float,
    cv: float = 4.0,
    slo_scale: float = 5.0,
    duration: float = 3600.0,
    split: str = "uniform",
    exponent: float = 1.0,
    memory: str = "13Gi",
    seed: int = 0,
    policy: str = "statmux",
    name: str = "bench",
    max_batch_size: int = 1,
) -> ModelSet:
    models: list[dict[str, Any]] = [
        {"name": f"m{i:03d}-{p.replace('.', '-')}", "profile": {"builtin": p}}
        for i, p in enumerate(profiles)
    ]
    doc = {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": name},
        "spec": {
            "models": models,
            "slo": {"sloScale": slo_scale},
            "workload": {
                "durationSeconds": duration,
                "seed": seed,
                "total": {"rate": rate, "cv": cv, "split": split, "exponent": exponent},
            },
            "cluster": {"gpus": gpus, "gpuMemory": memory},
            "placement": {"policy": policy},
            "maxBatchSize": max_batch_size,
        },
    }
    return parse_modelset(doc, name)


def mixed(kinds: tuple[str, ...], total: int) -> list[str]:
    """`total` models cycling through `kinds`: an equal number of each."""
    return [kinds[i % len(kinds)] for i in range(total)]
