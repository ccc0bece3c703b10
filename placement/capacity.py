"""Plans over GPU counts: monotone in resources, and the fewest GPUs reaching a target.

With the same workload, more GPUs must never give a worse plan: at worst the previous plan
still fits (its GPUs plus idle ones). A sweep therefore plans each GPU count as a re-plan
with the plan of the next smaller count as the incumbent (`planner.best_candidate`, what
`statmux plan --previous` does): the search's answer, the smaller count's plan as it was,
and that plan improved by a bounded local search that may use the extra GPUs compete, ties
keeping the carried plan. The attainment of a sweep never decreases, whatever the search
does, and `--target-attainment` agrees with a plain re-plan.

`fewest_gpus` answers the capacity question (`statmux plan --target-attainment 0.99`):
GPU counts 1, 2, 4, ... up to the first that reaches the target, then a bisection between
the last miss and that count; every count is planned as in a sweep, from the best plan of
the largest smaller count already planned.
"""

from __future__ import annotations

from dataclasses import dataclass

from statmux.placement.plan import Plan
from statmux.placement.planner import (
    Evaluated,
    best_candidate,
    build_problem,
    make_plan,
    run_policy,
)
from statmux.placement.search_space import Progress, SearchProblem
from statmux.placement.spec import Metadata, ModelSet, ModelSetSpec, SpecError

MAX_GPUS = 4096


@dataclass
class Planned:
    gpus: int
    problem: SearchProblem
    evaluated: Evaluated
    plan: Plan  # the incumbent of the next larger count

    @property
    def attainment(self) -> float:
        return self.evaluated.attainment


def with_gpus(spec: ModelSetSpec, gpus: int) -> ModelSetSpec:
    out = spec.model_copy(deep=True)
    out.cluster.gpus = gpus
    return out


def plan_gpus(
    spec: ModelSetSpec,
    gpus: int,
    previous: Planned | None = None,
    baselines: tuple[str, ...] = (),
    name: str = "sweep",
) -> Planned:
    """statmux's plan on `gpus` GPUs re-planned with `previous` (fewer GPUs) as the
    incumbent, through the same `best_candidate` as `statmux plan --previous`: never worse
    than `previous`. `baselines` join the max as in `statmux plan` (never below them)."""
    sized = with_gpus(spec, gpus)
    # planned by statmux: a manual placement's groups are not this count's
    sized.placement.policy, sized.placement.groups = "statmux", []
    problem = build_problem(sized)
    searched = run_policy(problem, "statmux")
    others = [run_policy(problem, b, sized) for b in baselines]
    incumbent = previous.plan if previous is not None and previous.gpus <= gpus else None
    # no minGainToReplace: a sweep rolls no pods, so any higher score is taken
    best, info = best_candidate(problem, searched, others, incumbent)
    ms = ModelSet(
        apiVersion="statmux.io/v1alpha1", kind="ModelSet", metadata=Metadata(name=name), spec=sized
    )
    return Planned(gpus, problem, best, make_plan(ms, problem, best, others, info))


def sweep(
    spec: ModelSetSpec,
    counts: list[int],
    baselines: tuple[str, ...] = (),
    progress: Progress | None = None,
    name: str = "sweep",
) -> list[Planned]:
    """Plans for increasing GPU counts; their attainment never decreases."""
    say = progress or (lambda _m: None)
    out: list[Planned] = []
    for gpus in sorted(set(counts)):
        out.append(plan_gpus(spec, gpus, out[-1] if out else None, baselines, name))
        say(f"{gpus} GPUs → {out[-1].attainment:.4f}")
    return out


def fewest_gpus(
    spec: ModelSetSpec,
    target: float,
    progress: Progress | None = None,
    baselines: tuple[str, ...] = (),
    name: str = "sweep",
) -> Planned:
    """The fewest GPUs (found by doubling, then bisection) whose plan reaches `target`;
    `baselines` join each count's max as in `statmux plan`."""
    say = progress or (lambda _m: None)
    planned: dict[int, Planned] = {}

    def plan(gpus: int) -> Planned | None:
        below = [p for n, p in planned.items() if n < gpus]
        previous = max(below, key=lambda p: p.gpus) if below else None
        try:
            found = plan_gpus(spec, gpus, previous, baselines, name)
        except SpecError:  # a model fits no config on so few GPUs
            return None
        planned[gpus] = found
        say(f"{gpus} GPUs → {found.attainment:.4f}")
        return found

    miss, gpus = 0, 1
    while True:
        p = plan(gpus)
        if p is not None and p.attainment >= target:
            hit = p
            break
        if gpus >= MAX_GPUS:
            best = max((q.attainment for q in planned.values()), default=0.0)
            raise SpecError(
                f"no plan reaches SLO attainment {target:g} with up to {MAX_GPUS} GPUs "
                f"(best {best:.4f}); lower the target or loosen the SLO"
            )
        miss, gpus = gpus, min(gpus * 2, MAX_GPUS)
    lo, hi = miss, hit.gpus  # lo misses (0: nothing planned), hi reaches
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = plan(mid)
        if p is not None and p.attainment >= target:
            hi, hit = mid, p
        else:
            lo = mid
    return hit
