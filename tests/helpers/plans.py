"""Small, valid Plans for unit tests, built with the typed model (never by hand as dicts)."""

from __future__ import annotations

from statmux.placement.plan import Plan, PlanCluster, PlanGroup, PlanModel, Predicted
from statmux.placement.spec import WeightSource

TINY_BERT = WeightSource(source="synthetic", architecture="bert", preset="tiny", dtype="float32")


def plan_model(name: str, pp: int, slo_seconds: float = 1.0, max_batch_size: int = 1) -> PlanModel:
    """A model entry for a group with `pp` stages: 10 ms per stage at batch 1."""
    return PlanModel(
        name=name,
        slo_seconds=slo_seconds,
        max_batch_size=max_batch_size,
        stage_latency_seconds={1: [0.01] * pp},
        weight_bytes_per_gpu=1e6,
        weights=TINY_BERT,
    )


def plan_group(name: str, pp: int, tp: int, models: list[str], **model_args: float) -> PlanGroup:
    return PlanGroup(
        name=name,
        gpus=pp * tp,
        pp=pp,
        tp=tp,
        memory_per_gpu_bytes=1e6 * len(models),
        models=[plan_model(m, pp, **model_args) for m in models],  # type: ignore[arg-type]
    )


def make_test_plan(
    groups: list[tuple[int, int, list[str]]],
    *,
    model_set: str = "demo",
    policy: str = "manual",
    gpus: int = 64,
    gpus_per_node: int = 8,
    attainment: float = 0.9,
) -> Plan:
    """A Plan whose group i is `g<i>` with (pp, tp, models) from `groups`."""
    return Plan(
        model_set=model_set,
        policy=policy,
        cluster=PlanCluster(gpus=gpus, gpu_memory_bytes=80 * 2**30, gpus_per_node=gpus_per_node),
        groups=[plan_group(f"g{i}", pp, tp, ms) for i, (pp, tp, ms) in enumerate(groups)],
        predicted=Predicted(attainment=attainment),
    )
