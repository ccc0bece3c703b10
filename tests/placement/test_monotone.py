"""Independent `statmux plan` runs are monotone in resources (issue 10): on the same workload,
planning again with one more GPU, more memory or a looser SLO never gives a lower attainment.

Each run here is a fresh plan (nothing carried between runs), as when a user sweeps the GPU
count with separate commands. Settings: the bundled demo and small sets built by the
project's scenario code, with short traces so the file runs in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from statmux.placement.capacity import with_gpus
from statmux.placement.planner import build_problem, plan_modelset
from statmux.placement.scenarios import BERT_MIX, S3_MIX, mixed, modelset
from statmux.placement.spec import ModelSet, load_modelset
from statmux.placement.statmux_search import StatmuxSearch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def demo(duration: float = 60) -> ModelSet:
    ms = load_modelset(EXAMPLES / "demo.yaml")
    ms.spec.workload.duration_seconds = duration
    return ms


def generated(profiles: list[str], gpus: int = 4, rate: float = 8.0, **kw) -> ModelSet:
    return modelset(
        profiles, gpus=gpus, rate=rate, duration=60, split="powerLaw", exponent=0.5, **kw
    )


def plan(ms: ModelSet) -> float:
    """What `statmux plan --no-baselines` reports: the search alone."""
    return plan_modelset(ms, "statmux").attainment


def assert_never_lower(scores: list[float], steps: list[object]) -> None:
    drops = [
        f"{a} → {b}: {100 * (x - y):.3f} points"
        for a, b, x, y in zip(steps, steps[1:], scores, scores[1:], strict=False)
        if y < x
    ]
    assert not drops, drops


SETTINGS = {
    "demo": (demo, range(3, 9)),
    "6 BERT": (lambda: generated(mixed(BERT_MIX, 6)), range(2, 9)),
    "6 BERT, CV 6": (lambda: generated(mixed(BERT_MIX, 6), cv=6.0), range(2, 9)),
    "6 BERT, SLO 2x, 8 GiB": (
        lambda: generated(mixed(BERT_MIX, 6), slo_scale=2.0, memory="8Gi"),
        range(2, 9),
    ),
    "12 BERT+MoE": (lambda: generated(mixed(S3_MIX, 12), rate=12.0), range(3, 10)),
    "8 x bert-2.6b": (lambda: generated(["bert-2.6b"] * 8, rate=10.0), range(2, 10)),
    # these two dropped before the smaller count was searched too: 0.33 points from 8 to 9
    # GPUs and 0.11 from 11 to 12; 0.73 from 12 to 13
    "12 BERT": (lambda: generated(mixed(BERT_MIX, 12), rate=16.0), range(6, 13)),
    "12 x bert-6.7b": (lambda: generated(["bert-6.7b"] * 12, rate=10.0), range(10, 15)),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_one_more_gpu_never_lowers_an_independent_plan(name: str) -> None:
    build, counts = SETTINGS[name]
    ms = build()
    scores = []
    for gpus in counts:
        ms.spec.cluster.gpus = gpus
        scores.append(plan(ms))
    assert_never_lower(scores, list(counts))


def test_more_memory_never_lowers_an_independent_plan() -> None:
    """The demo from "barely fits" (1 GiB: only 3 of its 8 models fit at all) to roomy."""
    ms = demo()
    steps = ["1Gi", "2Gi", "3Gi", "4Gi", "6Gi", "8Gi", "13Gi"]
    scores = []
    for memory in steps:
        ms.spec.cluster.gpu_memory = memory
        scores.append(plan(ms))
    assert_never_lower(scores, steps)


def test_a_looser_slo_never_lowers_an_independent_plan() -> None:
    steps = [1.5, 2.0, 3.0, 5.0, 8.0]
    scores = [plan(generated(mixed(BERT_MIX, 6), slo_scale=s)) for s in steps]
    assert_never_lower(scores, steps)


@pytest.mark.parametrize("profiles", [mixed(BERT_MIX, 6), ["bert-1.3b"] * 6])
def test_the_run_on_one_more_gpu_keeps_the_smaller_counts_candidates(profiles) -> None:
    """Why the GPU sweep is monotone: the whole problem on N + 1 GPUs also searches N GPUs
    (the extra one idle). With several latency clusters, every candidate found for N GPUs
    is exactly the one N's own run finds, so N's best is a candidate on N + 1."""
    spec = generated(profiles).spec
    small = StatmuxSearch(build_problem(with_gpus(spec, 4)))
    small.run()
    large = StatmuxSearch(build_problem(with_gpus(spec, 5)))
    large.run()
    models = tuple(small.problem.models)

    def of(search: StatmuxSearch, total: int, used: int) -> list[list[tuple[str, ...]]]:
        found = search._found[(models, total)]
        return [
            [(str(g.config), *g.models) for g in f.placement.groups]
            for f in found
            if f.placement.gpus == used
        ]

    carried = of(large, 5, 4)
    assert carried  # the smaller count's screen best at least
    own = of(small, 4, 4)
    if len(small._clusters) > 1:
        assert carried == own
    else:  # one cluster: the smaller count's partitions are ranked with this count's
        assert carried[0] == own[0]  # its screen's best, a candidate on both
