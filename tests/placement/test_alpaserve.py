"""The faithful AlpaServe baseline: its enumeration, stopping rule and published shapes."""

from __future__ import annotations

from statmux.placement.alpaserve import (
    alpaserve_search,
    binary_parts,
    fast_greedy,
    gpu_splits,
    group_partitions,
    latency_clusters,
)
from statmux.placement.plan import Group
from statmux.placement.planner import build_problem, run_policy
from statmux.placement.profile import ParallelConfig
from statmux.placement.scenarios import BERT_MIX, mixed, modelset


def configs(groups: list[Group]) -> list[tuple[int, int]]:
    return [(g.config.pp, g.config.tp) for g in groups]


def test_group_partitions_follow_the_published_enumeration() -> None:
    parts = group_partitions(10, 8)
    shapes = {tuple(configs(p)) for p in parts}
    # size 1, 2, 4, 8; pp <= 8, tp <= 4 (so no 1x8); leftovers are pipeline-only groups
    assert ((1, 1),) * 10 in shapes
    assert ((1, 2),) * 5 in shapes and ((2, 1),) * 5 in shapes
    assert ((4, 1), (4, 1), (2, 1)) in shapes and ((1, 4), (1, 4), (2, 1)) in shapes
    assert ((2, 4), (2, 1)) in shapes and ((8, 1), (2, 1)) in shapes
    assert all((1, 8) not in s for s in shapes)
    assert len(parts) == 1 + 2 + 3 + 3
    assert all(sum(g.config.gpus for g in p) == 10 for p in parts)
    # beyond a node only multiples of it; 48 GPUs: sizes up to 32 (pp8 x tp4)
    big = {configs(p)[0] for p in group_partitions(48, 8)}
    assert (8, 4) in big and (4, 4) in big and (8, 2) in big and (16, 1) not in big
    assert binary_parts(13) == [1, 4, 8]


def test_gpu_splits_enumerate_compositions_with_the_node_rule() -> None:
    assert sorted(gpu_splits(10, 2)) == [[8, 2], [9, 1]]
    # 105 compositions of 16 into 3 parts; the node rule keeps 56 (checked by hand for 10)
    assert len(gpu_splits(16, 3)) == 56
    assert all(sum(s) == 16 and min(s) >= 1 for s in gpu_splits(16, 3))


def small(gpus: int = 8, profiles: list[str] | None = None, **kw: float):
    ms = modelset(
        profiles or ["bert-1.3b"] * 8, gpus=gpus, rate=kw.pop("rate", 20), duration=120, **kw
    )
    return build_problem(ms.spec)


def test_fast_greedy_fills_memory_with_one_simulation_per_replica() -> None:
    p = small()
    groups = [Group(ParallelConfig(2, 1)) for _ in range(4)]
    placement = fast_greedy(p, groups, p.models)
    replicas = sum(len(g.models) for g in placement.groups)
    assert p.simulations == replicas + 1
    # the published stopping rule: no model fits on any group any more
    for g in placement.groups:
        assert not any(p.can_add(g, m) for m in p.models)
    assert all(placement.replicas(m) >= 1 for m in p.models)


def test_latency_clusters_use_the_published_threshold() -> None:
    p = small(gpus=16, profiles=mixed(BERT_MIX, 9))
    clusters = latency_clusters(p)
    assert [len(c) for c in clusters] == [3, 3, 3]
    kinds = [{m.split("-", 1)[1] for m in c} for c in clusters]
    assert all(len(k) == 1 for k in kinds)


def test_published_shapes() -> None:
    """The paper's shapes (alpaserve-results.md): model parallelism beats selective
    replication by a wide margin at CV 4, attainment rises with GPUs, and separation is
    tried on a heterogeneous set."""
    scores = []
    for gpus in (8, 12, 16):
        p = small(gpus=gpus, profiles=mixed(BERT_MIX, 12), rate=24, cv=4)
        found = alpaserve_search(p)
        assert found.splits > 0 and found.notes["clusters"] == [4, 4, 4]
        scores.append(p.evaluator().attainment(found.placement))
    assert scores == sorted(scores)
    p = small(gpus=12, profiles=mixed(BERT_MIX, 12), rate=24, cv=4)
    alpa = run_policy(p, "alpaserve").attainment
    sr = run_policy(p, "sr").attainment
    assert alpa >= sr + 0.05
