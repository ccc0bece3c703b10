"""The placement policies by name: the one list that everything else derives from.

The ModelSet's `placement.policy` values (and so the CRD's enum), `statmux plan --policy`'s
choices, the baselines every plan is compared with, the experiments' policies and the
planner's dispatch all read POLICIES. To add a policy, write its function (usually in
placement/policies.py) and add one entry here.

Importing this module is cheap (the CLI and the spec import it): each entry's `run` imports
the search code, which compiles numba kernels, only when it is called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statmux.placement.policies import PolicyResult
    from statmux.placement.search_space import SearchProblem
    from statmux.placement.spec import ModelSetSpec

# (the search problem, the ModelSet's spec when there is one) -> the placement
PolicyFn = Callable[["SearchProblem", "ModelSetSpec | None"], "PolicyResult"]


@dataclass(frozen=True)
class PolicyEntry:
    run: PolicyFn
    summary: str
    # compared against the chosen policy in every `statmux plan` and experiment
    baseline: bool = False
    # searches a placement on its own (manual takes the ModelSet's groups instead)
    searches: bool = True


def _statmux(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    from statmux.placement.policies import statmux_policy

    return statmux_policy(problem)


def _sr(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    from statmux.placement.policies import sr_policy

    return sr_policy(problem)


def _clockwork_pp(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    from statmux.placement.policies import clockwork_pp_policy

    return clockwork_pp_policy(problem)


def _alpaserve(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    from statmux.placement.policies import alpaserve_policy

    return alpaserve_policy(problem)


def _manual(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    from statmux.placement.planner import manual_placement

    return manual_placement(problem, spec)


POLICIES: dict[str, PolicyEntry] = {
    "statmux": PolicyEntry(
        _statmux, "screened greedy per config, then simulator-guided local search"
    ),
    "sr": PolicyEntry(_sr, "selective replication: one GPU per replica", baseline=True),
    "clockwork++": PolicyEntry(
        _clockwork_pp, "sr re-run per time window, free swaps (an upper bound)", baseline=True
    ),
    "alpaserve": PolicyEntry(
        _alpaserve,
        "AlpaServe as published: every group partition, fast greedy, device separation",
        baseline=True,
    ),
    "manual": PolicyEntry(_manual, "the ModelSet's placement.groups, verbatim", searches=False),
}

POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
BASELINES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if p.baseline)
# The policies an experiment compares: the baselines first, then the searching others.
COMPARED: tuple[str, ...] = BASELINES + tuple(
    n for n, p in POLICIES.items() if p.searches and not p.baseline
)


def unknown_policy_message(name: str) -> str:
    return f"unknown policy {name!r}; allowed: {', '.join(POLICY_NAMES)}"
