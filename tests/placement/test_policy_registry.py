"""POLICIES is the one list of placement policies: everything else derives from it."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from statmux.placement import experiments, planner
from statmux.placement.plan import Group, Placement
from statmux.placement.policies import PolicyResult
from statmux.placement.policy_registry import (
    BASELINES,
    COMPARED,
    POLICIES,
    POLICY_NAMES,
    PolicyEntry,
)
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem
from statmux.placement.spec import PlacementSpec, SpecError
from statmux.placement.synthetic_profiles import bert_like_profile
from statmux.placement.workload import gamma_workload


def test_the_spec_the_cli_the_baselines_and_the_experiments_derive_from_it() -> None:
    assert get_args(PlacementSpec.model_fields["policy"].annotation) == POLICY_NAMES
    assert tuple(n for n, p in POLICIES.items() if p.baseline) == BASELINES
    assert planner.BASELINES == BASELINES
    assert experiments.POLICIES == COMPARED
    assert set(COMPARED) == {n for n, p in POLICIES.items() if p.searches}
    assert COMPARED[: len(BASELINES)] == BASELINES  # baselines first: the CSV columns

    from statmux.cli import build_parser

    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    policy = next(a for a in sub.choices["plan"]._actions if a.dest == "policy")
    assert tuple(policy.choices) == POLICY_NAMES


def tiny_problem() -> SearchProblem:
    names = ["a", "b"]
    profiles = {m: bert_like_profile(m, latency=0.1) for m in names}
    workload = gamma_workload(names, [5.0, 5.0], 1.0, 60.0, 0)
    return SearchProblem(names, profiles, {m: 0.5 for m in names}, workload, 2, 13 * 2**30)


def test_the_planner_dispatches_by_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = Placement([Group(ParallelConfig(1, 1), ["a"]), Group(ParallelConfig(1, 1), ["b"])])
    calls: list[object] = []

    def fixed(problem: SearchProblem, spec: object) -> PolicyResult:
        calls.append(spec)
        return PolicyResult(chosen)

    monkeypatch.setitem(POLICIES, "fixed", PolicyEntry(fixed, "a test policy"))
    ev = planner.run_policy(tiny_problem(), "fixed")
    assert calls == [None] and ev.policy == "fixed"
    assert ev.result.placement is chosen and 0.0 <= ev.attainment <= 1.0


def test_an_unknown_policy_lists_every_registered_one() -> None:
    with pytest.raises(SpecError) as e:
        planner.run_policy(tiny_problem(), "fastest")
    assert str(e.value) == f"unknown policy 'fastest'; allowed: {', '.join(POLICY_NAMES)}"
