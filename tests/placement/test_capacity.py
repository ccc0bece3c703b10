"""Monotone in resources, and the capacity question (fewest GPUs reaching a target)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from statmux.placement.capacity import fewest_gpus, sweep
from statmux.placement.plan import Plan
from statmux.placement.scenarios import BERT_MIX, mixed, modelset

ROOT = Path(__file__).resolve().parents[2]
STATMUX = [sys.executable, "-m", "statmux"]


def small(**kw):
    return modelset(
        kw.pop("profiles", mixed(BERT_MIX, 6)),
        gpus=4,
        rate=kw.pop("rate", 8.0),
        duration=60,
        split="powerLaw",
        exponent=0.5,
        **kw,
    ).spec


@pytest.mark.parametrize("kw", [{}, {"cv": 6.0}, {"slo_scale": 2.0, "memory": "8Gi"}])
def test_more_gpus_never_lower_the_plan(kw) -> None:
    planned = sweep(small(**kw), [2, 3, 4, 5, 6, 7, 8])
    scores = [p.attainment for p in planned]
    assert scores == sorted(scores), scores
    for p in planned:
        assert p.evaluated.result.placement.gpus <= p.gpus


def test_looser_slo_and_more_memory_never_lower_the_carried_plan() -> None:
    """The previous plan still fits with more memory or a looser SLO: its attainment can
    only rise on the same workload (checked by simulation), so the search starts from it."""
    from statmux.placement.planner import build_problem, run_policy

    tight = build_problem(small(slo_scale=2.0, memory="8Gi"))
    base = run_policy(tight, "statmux")
    for looser in (small(slo_scale=3.0, memory="8Gi"), small(slo_scale=2.0, memory="13Gi")):
        problem = build_problem(looser)
        assert problem.evaluator().attainment(base.result.placement) >= base.attainment


def test_fewest_gpus_reaches_the_target_and_one_less_does_not() -> None:
    spec = small()
    hit = fewest_gpus(spec, 0.99)
    assert hit.attainment >= 0.99
    if hit.gpus > 1:
        below = sweep(spec, list(range(1, hit.gpus)))
        assert max(p.attainment for p in below) < 0.99


def test_cli_target_attainment(tmp_path: Path) -> None:
    doc = (
        (ROOT / "examples" / "demo.yaml")
        .read_text()
        .replace("durationSeconds: 600", "durationSeconds: 60")
    )
    path = tmp_path / "demo.yaml"
    path.write_text(doc)
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [*STATMUX, "plan", str(path), "--target-attainment", "0.99", "-q", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    plan = Plan.read(out)
    assert "fewest GPUs reaching 99.00 %" in r.stdout
    assert f": {plan.cluster.gpus} (" in r.stdout
    assert plan.attainment >= 0.99 and sum(g.gpus for g in plan.groups) <= plan.cluster.gpus
    bad = subprocess.run(
        [*STATMUX, "plan", str(path), "--target-attainment", "1.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "(0, 1]" in bad.stderr


def test_demo_sweep_is_monotone() -> None:
    """The bundled demo (examples/demo.yaml, a 60 s slice) over 4..8 GPUs."""
    from statmux.placement.spec import load_modelset

    spec = load_modelset(ROOT / "examples" / "demo.yaml").spec
    spec.workload.duration_seconds = 60
    scores = [p.attainment for p in sweep(spec, [4, 5, 6, 7, 8])]
    assert scores == sorted(scores), scores


def test_capacity_agrees_with_a_replan() -> None:
    """`--target-attainment` plans each GPU count through planner.best_candidate, as
    `statmux plan --previous` does: on the bundled demo (60 s), the count's plan given the
    smaller count's plan is exactly the re-plan's, and never below it."""
    from statmux.placement.capacity import plan_gpus, with_gpus
    from statmux.placement.planner import plan_modelset
    from statmux.placement.spec import load_modelset

    ms = load_modelset(ROOT / "examples" / "demo.yaml")
    ms.spec.workload.duration_seconds = 60
    smaller = plan_gpus(ms.spec, 4)
    for gpus in (5, 6):
        planned = plan_gpus(ms.spec, gpus, smaller)
        sized = ms.model_copy(update={"spec": with_gpus(ms.spec, gpus)})
        replan = plan_modelset(sized, "statmux", previous=smaller.plan)
        assert planned.attainment == replan.attainment >= smaller.attainment
        assert planned.plan.groups == replan.groups
        assert replan.search.incumbent is not None
        assert replan.search.incumbent.attainment == smaller.attainment
        smaller = planned
